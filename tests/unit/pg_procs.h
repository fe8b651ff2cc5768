/* pg_procs: Postgres for the C unit tests (test_store, test_readstate).
 * CHATD_TEST_DATABASE_URL when set, else a throwaway Postgres 15 of the
 * test's own, started with tools/services.sh in /tmp on a port of
 * base..base+19 (by pid); every run works in a schema of its own (PGOPTIONS
 * search_path), so it never touches other data; a blocking connection (bc)
 * for the checks (qint, qexec). The test's own Postgres can be killed (-9)
 * and started again in its data directory (pg_kill9, pg_start).
 * Header-only: static functions, one copy per test executable. */
#ifndef CHATD_TEST_PG_PROCS_H
#define CHATD_TEST_PG_PROCS_H
#include "ports.h"
#include <libpq-fe.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_url[256], g_dir[128], g_schema[64], g_datadir[256];
static int g_own_pg, g_port;
static PGconn *bc; /* blocking connection for checks */

static void quiet_notice(void *arg, const char *msg) { (void)arg; (void)msg; }

/* The first column of the first row as a number; -1 when there is none
 * (no row, NULL, or the query failed: logged). */
static inline long qint(const char *sql)
{
    PGresult *r = PQexec(bc, sql);
    long v = -1;
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0 && !PQgetisnull(r, 0, 0))
        v = atol(PQgetvalue(r, 0, 0));
    else if (PQresultStatus(r) != PGRES_TUPLES_OK)
        fprintf(stderr, "query failed: %s: %s\n", sql, PQresultErrorMessage(r));
    PQclear(r);
    return v;
}

static inline int qexec(const char *sql)
{
    PGresult *r = PQexec(bc, sql);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
    if (!ok) fprintf(stderr, "exec failed: %s: %s\n", sql, PQresultErrorMessage(r));
    PQclear(r);
    return ok ? 0 : -1;
}

static inline int pg_start(void)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "bash -c '. tools/services.sh && services_start_postgres %s %d'", g_dir, g_port);
    return system(cmd) == 0 ? 0 : -1;
}

static inline long postmaster_pid(void)
{
    char p[300], line[64] = "";
    snprintf(p, sizeof p, "%s/postmaster.pid", g_datadir);
    FILE *f = fopen(p, "r");
    if (!f) return -1;
    if (!fgets(line, sizeof line, f)) line[0] = 0;
    fclose(f);
    return atol(line);
}

/* kill -9 the postmaster we started and its children, wait until gone */
static inline int pg_kill9(void)
{
    long pm = postmaster_pid();
    if (pm <= 0) return -1;
    char cmd[256];
    snprintf(cmd, sizeof cmd, "kids=$(pgrep -P %ld); kill -9 %ld $kids; "
             "for i in $(seq 1 100); do kill -0 %ld $kids 2>/dev/null || exit 0; sleep 0.05; done; exit 1",
             pm, pm, pm);
    return system(cmd) == 0 ? 0 : -1;
}

static inline void pg_stop(void)
{
    long pm = postmaster_pid();
    if (pm > 0) kill((pid_t)pm, SIGINT); /* fast shutdown of the postmaster we started */
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "bash -c 'for i in $(seq 1 100); do kill -0 %ld 2>/dev/null || break; sleep 0.05; done;"
             " . tools/services.sh && services_stop %s' ; rm -rf %s %s", pm, g_dir, g_dir,
             strncmp(g_datadir, "/tmp/chatd-", 11) == 0 ? g_datadir : "");
    if (system(cmd) != 0) fprintf(stderr, "pg_stop: cleanup failed\n");
}

/* Postgres, the test's schema and bc, for the test called name (its
 * directory and schema are named after it). 0 ready, 77 skip (no
 * Postgres 15 and no CHATD_TEST_DATABASE_URL), 1 failed. */
static inline int pg_setup(const char *name, int port_base)
{
    const char *env = getenv("CHATD_TEST_DATABASE_URL");
    /* a free port of the 20 from port_base (or of the environment's
     * range, ports.h): another test, or another run of the suite, may hold
     * some */
    g_port = test_port_pick(port_base, port_base + 19);
    if (g_port < 0) g_port = port_base;
    if (env && *env) {
        snprintf(g_url, sizeof g_url, "%s", env);
    } else {
        if (access("/usr/lib/postgresql/15/bin/postgres", X_OK) != 0) {
            fprintf(stderr, "skip: no Postgres 15 and no CHATD_TEST_DATABASE_URL\n");
            return 77;
        }
        snprintf(g_dir, sizeof g_dir, "/tmp/chatd-%s-test-%d", name, (int)getpid());
        mkdir(g_dir, 0755); /* reachable by the postgres user */
        if (pg_start() != 0) {
            fprintf(stderr, "cannot start postgres in %s\n", g_dir);
            return 1;
        }
        g_own_pg = 1;
        snprintf(g_url, sizeof g_url, "postgresql://postgres@127.0.0.1:%d/chatd", g_port);
    }
    snprintf(g_schema, sizeof g_schema, "%s_test_%d", name, (int)getpid());
    char opt[128];
    snprintf(opt, sizeof opt, "-c search_path=%s", g_schema);
    setenv("PGOPTIONS", opt, 1);
    bc = PQconnectdb(g_url);
    if (PQstatus(bc) != CONNECTION_OK) {
        fprintf(stderr, "blocking connection failed: %s\n", PQerrorMessage(bc));
        PQfinish(bc);
        if (g_own_pg) pg_stop();
        return 1;
    }
    PQsetNoticeProcessor(bc, quiet_notice, NULL);
    if (g_own_pg) {
        PGresult *r = PQexec(bc, "SHOW data_directory");
        if (PQresultStatus(r) == PGRES_TUPLES_OK)
            snprintf(g_datadir, sizeof g_datadir, "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
    }
    char sql[160];
    snprintf(sql, sizeof sql, "CREATE SCHEMA %s", g_schema);
    if (qexec(sql) != 0) {
        PQfinish(bc);
        if (g_own_pg) pg_stop();
        return 1;
    }
    return 0;
}

/* Drops the schema, closes bc, stops our own Postgres. */
static inline void pg_teardown(void)
{
    char sql[160];
    snprintf(sql, sizeof sql, "DROP SCHEMA %s CASCADE", g_schema);
    qexec(sql);
    PQfinish(bc);
    bc = NULL;
    if (g_own_pg) pg_stop();
}

#endif
