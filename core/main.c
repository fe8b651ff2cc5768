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

/* Sets env (read by config.c) to the first existing folder of paths[]
 * when no flag, no env and no cwd_default folder names it. */
static void default_folder(int argc, char **argv, const char *flag, const char *env,
                           const char *cwd_default, const char *const *paths, int npaths)
{
    if (has_flag(argc, argv, flag) || getenv(env) || is_dir(cwd_default)) return;
    for (int i = 0; i < npaths; i++)
        if (paths[i][0] && is_dir(paths[i])) {
            setenv(env, paths[i], 0);
            return;
        }
}

int main(int argc, char **argv)
{
    char dir[PATH_MAX];
    if (exe_dir(dir, sizeof dir) == 0) {
        /* a build tree: <tree>/build/chatd -> <tree>/scripts, <tree>/web */
        char tree[PATH_MAX + 4], t_scripts[PATH_MAX + 16] = "", t_web[PATH_MAX + 16] = "";
        snprintf(tree, sizeof tree, "%s/..", dir);
        char *real = realpath(tree, NULL);
        if (real) {
            snprintf(t_scripts, sizeof t_scripts, "%s/scripts", real);
            snprintf(t_web, sizeof t_web, "%s/web", real);
            free(real);
        }
        /* installed: <prefix>/bin/chatd -> <prefix>/etc/chatd/scripts
         * (/etc/chatd/scripts for /usr), <prefix>/share/chatd/web */
        char i_scripts[PATH_MAX + 32] = "", i_web[PATH_MAX + 32] = "";
        const char *slash = strrchr(dir, '/');
        int in_bin = slash && !strcmp(slash, "/bin");
        if (in_bin) {
            int plen = (int)(slash - dir);           /* <prefix> ("" for /bin) */
            int usr = plen == 4 && !strncmp(dir, "/usr", 4);
            snprintf(i_scripts, sizeof i_scripts, "%.*s/etc/chatd/scripts", usr ? 0 : plen, dir);
            snprintf(i_web, sizeof i_web, "%.*s/share/chatd/web", plen, dir);
        }
        /* a binary in <prefix>/bin is an installed one: its parent is the
         * prefix, never a tree (/usr/bin/../web is no client) */
        const char *scripts[2] = {in_bin ? i_scripts : t_scripts, in_bin ? "" : i_scripts};
        const char *web[2] = {in_bin ? i_web : t_web, in_bin ? "" : i_web};
        default_folder(argc, argv, "--scripts", "CHAT_SCRIPTS", "scripts", scripts, 2);
        default_folder(argc, argv, "--web", "CHAT_WEB_DIR", "web", web, 2);
    }
    return workers_main(argc, argv);
}
