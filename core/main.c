/* main: the chatd entry point. Finds the installed policy scripts and web
 * client when neither a flag, the environment nor the working directory
 * names them, then hands over to workers.c, which runs one node in this
 * process (server.c) or a supervisor of several (chatd --workers N).
 * Owns: that lookup only. Order: --scripts / --web flag > CHAT_SCRIPTS /
 * CHAT_WEB_DIR > scripts/ and web/ in the working directory (a checkout) >
 * the folders around this binary: installed as <prefix>/bin/chatd,
 * <prefix>/etc/chatd/scripts (/etc/chatd/scripts when the prefix is /usr,
 * as GNUInstallDirs does) and <prefix>/share/chatd/web; anywhere else (a
 * build tree, <tree>/build/chatd), <tree>/scripts and <tree>/web. */
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

/* The folder holding this binary into out (no trailing slash, "" for /);
 * 0 ok. */
static int exe_dir(char *out, size_t n)
{
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0) return -1;
    exe[len] = 0;
    char *slash = strrchr(exe, '/');
    if (!slash) return -1;
    *slash = 0;
    snprintf(out, n, "%s", exe);
    return 0;
}

/* 1 when folder/file exists (a marker that folder is what we look for) */
static int has_file(const char *folder, const char *file)
{
    char p[PATH_MAX + 64];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", folder, file);
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* Sets env (read by config.c) to path when no flag, no env and no
 * cwd_default folder names one, and path is a folder holding marker. */
static void default_folder(int argc, char **argv, const char *flag, const char *env,
                           const char *cwd_default, const char *path, const char *marker)
{
    if (has_flag(argc, argv, flag) || getenv(env) || is_dir(cwd_default)) return;
    if (path[0] && is_dir(path) && has_file(path, marker)) setenv(env, path, 0);
}

int main(int argc, char **argv)
{
    char dir[PATH_MAX];
    if (exe_dir(dir, sizeof dir) == 0) {
        char scripts[PATH_MAX + 32] = "", web[PATH_MAX + 32] = "";
        const char *slash = strrchr(dir, '/');
        if (slash && !strcmp(slash, "/bin")) {
            /* installed: <prefix>/bin/chatd -> <prefix>/etc/chatd/scripts
             * (/etc/chatd/scripts for /usr), <prefix>/share/chatd/web; its
             * parent is the prefix, never a tree (/usr/bin/../web is no client) */
            int plen = (int)(slash - dir);           /* <prefix> ("" for /bin) */
            int usr = plen == 4 && !strncmp(dir, "/usr", 4);
            snprintf(scripts, sizeof scripts, "%.*s/etc/chatd/scripts", usr ? 0 : plen, dir);
            snprintf(web, sizeof web, "%.*s/share/chatd/web", plen, dir);
        } else {
            /* a build tree: <tree>/build/chatd -> <tree>/scripts, <tree>/web,
             * only when they hold the policy and the client (a binary in
             * /app or /usr/sbin never takes an unrelated /scripts) */
            char tree[PATH_MAX + 4];
            snprintf(tree, sizeof tree, "%s/..", dir);
            char *real = realpath(tree, NULL);
            if (real) {
                snprintf(scripts, sizeof scripts, "%s/scripts", real);
                snprintf(web, sizeof web, "%s/web", real);
                free(real);
            }
        }
        default_folder(argc, argv, "--scripts", "CHAT_SCRIPTS", "scripts", scripts, "policy.lua");
        default_folder(argc, argv, "--web", "CHAT_WEB_DIR", "web", web, "index.html");
    }
    return workers_main(argc, argv);
}
