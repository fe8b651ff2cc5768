/* log: leveled, single-line log records on stderr.
 * Owns: the log level, the redaction of secrets (tokens in query strings,
 * Authorization headers) and the escaping of control characters before
 * anything reaches the log: one record is always exactly one line, whatever
 * a logged value (a JWT claim, a room, a reason) contains. Every module logs
 * through log_msg(); nothing else writes to stderr. */
#ifndef CHATD_LOG_H
#define CHATD_LOG_H
#include <stddef.h>

typedef enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR } log_level_t;

void log_set_level(log_level_t lvl);
log_level_t log_get_level(void);
/* parse "debug"/"info"/"warn"/"error"; returns -1 when unknown */
int log_level_parse(const char *s);

void log_msg(log_level_t lvl, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Copy s into out (size n) with every token=... value in a query string and
 * every "Bearer xxx" replaced by "[redacted]". Always NUL-terminates. */
void log_redact(const char *s, char *out, size_t n);

/* Copy s into out (size n) with every control character escaped: \n \r \t
 * as two characters, other C0 bytes and DEL as \xNN, the C1 controls
 * (U+0080..U+009F) and U+2028/U+2029 as \uNNNN. Everything else (UTF-8
 * text, backslashes, quotes) is copied as is. Truncates at an escape
 * boundary; always NUL-terminates. log_msg applies it to every record. */
void log_escape(const char *s, char *out, size_t n);

#define LOGD(mod, ...) do { if (log_get_level() <= LOG_DEBUG) log_msg(LOG_DEBUG, mod, __VA_ARGS__); } while (0)
#define LOGI(mod, ...) log_msg(LOG_INFO, mod, __VA_ARGS__)
#define LOGW(mod, ...) log_msg(LOG_WARN, mod, __VA_ARGS__)
#define LOGE(mod, ...) log_msg(LOG_ERROR, mod, __VA_ARGS__)

#endif
