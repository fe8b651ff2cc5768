/* main: the chatd entry point. Finds the installed policy scripts and web
 * client when neither a flag, the environment nor the working directory
 * names them, then hands over to workers.c, which runs one node in this
 * process (server.c) or a supervisor of several (chatd --workers N).
 * Owns: that lookup only. Order: --scripts / --web flag > CHAT_SCRIPTS /
 * CHAT_WEB_DIR > scripts/ and web/ in the working directory (a checkout) >
 * the install layout around this binary, <prefix>/bin/chatd:
 * <prefix>/etc/chatd/scripts (/etc/chatd/scripts when the prefix is /usr,
 * as GNUInstallDirs does) and <prefix>/share/chatd/web. */
#define _GNU_SOURCE
#include "workers.h"
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int has_flag(int argc, char **argv, const char *flag)
{
    size_t n = strlen(flag);
    for (int i = 1; i < argc; i++)
        if (!strncmp(argv[i], flag, n) && (argv[i][n] == 0 || argv[i][n] == '=')) return 1;
    return 0;
}

/* The install prefix of this binary (<prefix>/bin/chatd) into out; 0 ok. */
static int install_prefix(char *out, size_t n)
{
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0) return -1;
    exe[len] = 0;
    char *slash = strrchr(exe, '/');
    if (!slash) return -1;
    *slash = 0;                                   /* <prefix>/bin */
    slash = strrchr(exe, '/');
    if (!slash || strcmp(slash, "/bin")) return -1;
    *slash = 0;                                   /* <prefix> ("" for /bin) */
    snprintf(out, n, "%s", exe);
    return 0;
}

/* Sets env (read by config.c) to path when nothing else names the folder
 * and path exists. */
static void installed_default(int argc, char **argv, const char *flag, const char *env,
                              const char *cwd_default, const char *path)
{
    if (has_flag(argc, argv, flag) || getenv(env) || is_dir(cwd_default)) return;
    if (is_dir(path)) setenv(env, path, 0);
}

int main(int argc, char **argv)
{
    char prefix[PATH_MAX], scripts[PATH_MAX + 32], web[PATH_MAX + 32];
    if (install_prefix(prefix, sizeof prefix) == 0) {
        snprintf(scripts, sizeof scripts, "%s/etc/chatd/scripts", strcmp(prefix, "/usr") ? prefix : "");
        snprintf(web, sizeof web, "%s/share/chatd/web", prefix);
        installed_default(argc, argv, "--scripts", "CHAT_SCRIPTS", "scripts", scripts);
        installed_default(argc, argv, "--web", "CHAT_WEB_DIR", "web", web);
    }
    return workers_main(argc, argv);
}
