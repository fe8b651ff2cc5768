/* api_parse: the pure half of the server API: which route a path names,
 * which methods it allows, and the validation of each route's JSON body
 * into plain fields (400 reasons for everything wrong). No I/O, no state:
 * the unit tests and the fuzz target call it directly.
 * Owns nothing beyond the parsed objects it returns (freed by their
 * *_clear). Layer: with util (jansson). */
#ifndef CHATD_API_PARSE_H
#define CHATD_API_PARSE_H
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include "util.h"

#define API_ID_MAX CLIENT_ID_BYTES /* a message id: 1-64 characters (util.h client_id_valid) */
#define API_USER_MAX 127       /* a user id / display name: 1-127 bytes */
#define API_META_MAX 4096      /* meta: a JSON object of at most 4 KiB */
#define API_REASON_MAX 200     /* a ban or disconnect reason */
#define API_BAN_MAX_S (10ll * 365 * 86400) /* the longest ban (10 years) */

enum { AR_NONE = 0, AR_PUBLISH, AR_ROOM, AR_DELETE_MSG, AR_DISCONNECT, AR_BAN, AR_N };

typedef struct api_route {
    int route;                 /* AR_* */
    unsigned allow;            /* bit (1 << HM_*) per allowed method */
    char room[CHAT_ROOM_MAX + 1];
    char user[API_USER_MAX + 1];
    uint64_t seq;
} api_route;

/* path: the request path after "/api/" (lws has decoded %XX). 0 matched;
 * -1 no such route (404); -2 a route with a bad parameter (400, err set). */
int api_route_match(const char *path, api_route *out, char *err, size_t errlen);
/* A route's name for metrics and logs ("publish", "room", ...). */
const char *api_route_name(int route);
/* A user id or display name: 1..API_USER_MAX bytes of UTF-8 text without
 * control characters. */
int api_user_valid(const char *s, size_t len);

typedef struct api_publish {
    json_t *root;              /* owns the strings below */
    const char *id, *user, *name, *body;
    size_t body_len;
    char *meta;                /* malloc'd JSON object text (as given), or NULL */
    size_t meta_len;
} api_publish;

/* POST /api/rooms/{room}/messages. 0, or -1 with err (400). */
int api_parse_publish(const char *text, size_t len, api_publish *out, char *err, size_t errlen);
void api_publish_clear(api_publish *p);

typedef struct api_ban {
    int64_t seconds;           /* PUT: > 0 */
    char room[CHAT_ROOM_MAX + 1];    /* "" = every room */
    char reason[API_REASON_MAX + 1];
} api_ban;

/* PUT (lift 0) / DELETE (lift 1) /api/users/{user}/ban; text may be empty
 * (DELETE). 0, or -1 with err (400). */
int api_parse_ban(const char *text, size_t len, int lift, api_ban *out, char *err, size_t errlen);
/* POST /api/users/{user}/disconnect: optional reason; text may be empty. */
int api_parse_disconnect(const char *text, size_t len, char reason[API_REASON_MAX + 1], char *err,
                         size_t errlen);

/* DELETE /api/rooms/{room}/messages/{seq} (moderator delete): an optional
 * body {"reason", "user", "name", "id"}, strings; user and name 1-127
 * bytes of text without control characters, id 1-64 characters (as a
 * client's: client_id_valid). Absent
 * fields keep their defaults: user "moderator", name "Moderator", id and
 * reason NULL (the caller names the id "api-delete-<seq>"). text may be
 * empty. 0, or -1 with err (400). */
typedef struct api_delete {
    json_t *root;              /* owns the strings below (NULL: no body) */
    const char *user, *name, *id, *reason;
} api_delete;
int api_parse_delete(const char *text, size_t len, api_delete *out, char *err, size_t errlen);
void api_delete_clear(api_delete *d);

#endif
