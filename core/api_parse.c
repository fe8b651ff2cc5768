/* api_parse: see api_parse.h. */
#define _GNU_SOURCE
#include "api_parse.h"
#include "frame.h"
#include "httpd.h"
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(char *err, size_t errlen, const char *fmt, const char *a)
{
    snprintf(err, errlen, fmt, a);
    return -1;
}

/* a route with a bad parameter: -2 */
static int bad_param(char *err, size_t errlen, const char *what)
{
    snprintf(err, errlen, "%s", what);
    return -2;
}

const char *api_route_name(int route)
{
    static const char *N[AR_N] = {"none", "publish", "room", "delete", "disconnect", "ban"};
    return route >= 0 && route < AR_N ? N[route] : "none";
}

/* UTF-8 well-formed (util.h's utf8_seq, the one decoder), no C0/DEL and no
 * C1 controls (U+0080-U+009F: 0xC2 0x80-0x9F) */
int api_user_valid(const char *s, size_t len)
{
    if (!s || len < 1 || len > API_USER_MAX) return 0;
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        unsigned c = u[i];
        if (c < 0x20 || c == 0x7f) return 0;
        size_t k = utf8_seq(s + i, len - i);
        if (!k) return 0;
        if (k == 2 && c == 0xC2 && u[i + 1] < 0xA0) return 0;
        i += k;
    }
    return 1;
}

static int parse_seq(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    if (seq_parse(s, strlen(s), &v) != 0 || v < 1) return -1;
    *out = v;
    return 0;
}

int api_route_match(const char *path, api_route *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (!strncmp(path, "rooms/", 6)) {
        const char *room = path + 6, *slash = strchr(room, '/');
        size_t rl = slash ? (size_t)(slash - room) : strlen(room);
        const char *rest = slash ? slash + 1 : NULL;
        if (!rest) { out->route = AR_ROOM; out->allow = 1u << HM_GET; }
        else if (!strcmp(rest, "messages")) { out->route = AR_PUBLISH; out->allow = 1u << HM_POST; }
        else if (!strncmp(rest, "messages/", 9) && rest[9] && !strchr(rest + 9, '/')) {
            out->route = AR_DELETE_MSG;
            out->allow = 1u << HM_DELETE;
            if (parse_seq(rest + 9, &out->seq) < 0)
                return bad_param(err, errlen, "seq must be a positive integer");
        } else return -1;
        if (!room_name_valid(room, rl))
            return bad_param(err, errlen, "room: 1-64 characters of [A-Za-z0-9_.-]");
        memcpy(out->room, room, rl);
        out->room[rl] = 0;
        return 0;
    }
    if (!strncmp(path, "users/", 6)) {
        /* users/{user}/disconnect | users/{user}/ban; the user is what is
         * between "users/" and the last '/' */
        const char *user = path + 6, *last = strrchr(user, '/');
        if (!last) return -1;
        if (!strcmp(last + 1, "disconnect")) { out->route = AR_DISCONNECT; out->allow = 1u << HM_POST; }
        else if (!strcmp(last + 1, "ban")) {
            out->route = AR_BAN;
            out->allow = (1u << HM_PUT) | (1u << HM_DELETE);
        } else return -1;
        size_t ul = (size_t)(last - user);
        if (!api_user_valid(user, ul))
            return bad_param(err, errlen, "user: 1-127 bytes of text without control characters");
        memcpy(out->user, user, ul);
        out->user[ul] = 0;
        return 0;
    }
    return -1;
}

/* ---- bodies -------------------------------------------------------------- */

static json_t *load(const char *text, size_t len, char *err, size_t errlen)
{
    json_error_t je;
    /* A raw NUL byte is never JSON, but jansson 2.14 skips one that follows
     * a literal or a number ({"meta":{"a":true\0}} loads): the raw text
     * of meta would carry it into frames and the store. */
    if (memchr(text, 0, len)) {
        snprintf(err, errlen, "invalid JSON: a NUL byte");
        return NULL;
    }
    /* NUL inside strings is accepted here so that it is refused below with
     * a clear reason (decided: a body with U+0000 is bad_request) */
    /* an integer beyond 64 bits is JSON (in meta, which is kept as given,
     * or in a member nobody reads); "seconds" is the one member the routes
     * read as an integer */
    static const char *const ints[] = {"seconds"};
    json_t *root = frame_json_load(text, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, ints, 1, &je);
    if (!root) {
        snprintf(err, errlen, "invalid JSON: %s (line %d, column %d)", je.text, je.line, je.column);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        snprintf(err, errlen, "the body must be a JSON object");
        return NULL;
    }
    return root;
}

/* A string member: 1 found (*s, *l set), 0 absent or null, -1 wrong type
 * or containing U+0000. */
static int str_member(json_t *o, const char *k, const char **s, size_t *l)
{
    json_t *v = json_object_get(o, k);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_string(v)) return -1;
    *s = json_string_value(v);
    *l = json_string_length(v);
    if (memchr(*s, 0, *l)) return -1;
    return 1;
}

/* 1 when a string anywhere in v (a value, or an object's key) holds U+0000 */
static int has_nul(json_t *v)
{
    if (json_is_string(v)) return memchr(json_string_value(v), 0, json_string_length(v)) != NULL;
    if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++)
            if (has_nul(json_array_get(v, i))) return 1;
        return 0;
    }
    if (json_is_object(v)) {
        const char *k;
        size_t kl;
        json_t *x;
        json_object_keylen_foreach(v, k, kl, x) {
            if (memchr(k, 0, kl) || has_nul(x)) return 1;
        }
    }
    return 0;
}

int api_parse_publish(const char *text, size_t len, api_publish *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (!len) return fail(err, errlen, "%s", "a JSON body is required");
    json_t *root = load(text, len, err, errlen);
    if (!root) return -1;
    out->root = root;
    size_t l;
    int r = str_member(root, "id", &out->id, &l);
    if (r <= 0 || !client_id_valid(out->id, l)) {
        api_publish_clear(out);
        return fail(err, errlen, "%s", r == 0 ? "id is required: a string of 1-64 characters"
                                              : "id must be a string of 1-64 characters");
    }
    r = str_member(root, "user", &out->user, &l);
    if (r <= 0 || !api_user_valid(out->user, l)) {
        api_publish_clear(out);
        return fail(err, errlen, "%s", "user is required: 1-127 bytes of text without control characters");
    }
    r = str_member(root, "name", &out->name, &l);
    if (r < 0 || (r == 1 && !api_user_valid(out->name, l))) {
        api_publish_clear(out);
        return fail(err, errlen, "%s", "name: 1-127 bytes of text without control characters");
    }
    if (r == 0) out->name = out->user;
    json_t *b = json_object_get(root, "body");
    if (!json_is_string(b)) {
        api_publish_clear(out);
        return fail(err, errlen, "%s", "body is required: a string");
    }
    out->body = json_string_value(b);
    out->body_len = json_string_length(b);
    if (memchr(out->body, 0, out->body_len)) {
        api_publish_clear(out);
        return fail(err, errlen, "%s", "body contains U+0000");
    }
    json_t *meta = json_object_get(root, "meta");
    if (meta && !json_is_null(meta)) {
        if (!json_is_object(meta)) {
            api_publish_clear(out);
            return fail(err, errlen, "%s", "meta must be a JSON object");
        }
        if (has_nul(meta)) {   /* as for the body: U+0000 is refused before a seq */
            api_publish_clear(out);
            return fail(err, errlen, "%s", "meta contains U+0000");
        }
        /* stored and broadcast as given: the text of the member itself */
        size_t off, ml;
        if (json_raw_member(text, len, "meta", &off, &ml) == 1 && text[off] == '{') {
            out->meta = malloc(ml + 1);
            if (out->meta) { memcpy(out->meta, text + off, ml); out->meta[ml] = 0; }
            out->meta_len = ml;
        } else { /* an escaped key: jansson's compact text of the same object */
            out->meta = json_dumps(meta, JSON_COMPACT | JSON_PRESERVE_ORDER);
            out->meta_len = out->meta ? strlen(out->meta) : 0;
        }
        if (!out->meta) {
            api_publish_clear(out);
            return fail(err, errlen, "%s", "out of memory");
        }
        if (out->meta_len > API_META_MAX) {
            api_publish_clear(out);
            return fail(err, errlen, "%s", "meta is larger than 4096 bytes");
        }
    }
    return 0;
}

void api_publish_clear(api_publish *p)
{
    json_decref(p->root);
    free(p->meta);
    memset(p, 0, sizeof *p);
}

static int reason_member(json_t *root, char out[API_REASON_MAX + 1], char *err, size_t errlen)
{
    const char *s;
    size_t l;
    int r = str_member(root, "reason", &s, &l);
    out[0] = 0;
    if (r < 0 || (r == 1 && l > API_REASON_MAX))
        return fail(err, errlen, "%s", "reason: a string of at most 200 bytes");
    if (r == 1) {
        /* UTF-8 already (jansson); it becomes a close reason: no controls */
        for (size_t i = 0; i < l; i++)
            if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
                return fail(err, errlen, "%s", "reason: no control characters");
        memcpy(out, s, l);
        out[l] = 0;
    }
    return 0;
}

int api_parse_ban(const char *text, size_t len, int lift, api_ban *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (!len) {
        if (lift) return 0;
        return fail(err, errlen, "%s", "a JSON body is required: {\"seconds\": N}");
    }
    json_t *root = load(text, len, err, errlen);
    if (!root) return -1;
    int rc = -1;
    const char *room;
    size_t rl;
    int r = str_member(root, "room", &room, &rl);
    if (r < 0 || (r == 1 && !room_name_valid(room, rl))) {
        fail(err, errlen, "%s", "room: 1-64 characters of [A-Za-z0-9_.-]");
        goto out;
    }
    if (r == 1) { memcpy(out->room, room, rl); out->room[rl] = 0; }
    if (!lift) {
        json_t *s = json_object_get(root, "seconds");
        if (!json_is_integer(s) || json_integer_value(s) < 1 || json_integer_value(s) > API_BAN_MAX_S) {
            fail(err, errlen, "%s", "seconds is required: an integer from 1 to 315360000");
            goto out;
        }
        out->seconds = (int64_t)json_integer_value(s);
        if (reason_member(root, out->reason, err, errlen) < 0) goto out;
    }
    rc = 0;
out:
    json_decref(root);
    return rc;
}

int api_parse_disconnect(const char *text, size_t len, char reason[API_REASON_MAX + 1], char *err,
                         size_t errlen)
{
    reason[0] = 0;
    if (!len) return 0;
    json_t *root = load(text, len, err, errlen);
    if (!root) return -1;
    int rc = reason_member(root, reason, err, errlen);
    json_decref(root);
    return rc;
}

/* an optional string member of text without controls, at most max bytes */
static int opt_text(json_t *o, const char *k, const char **out, size_t max)
{
    json_t *v = json_object_get(o, k);
    if (!v) return 0;
    if (!json_is_string(v) || json_string_length(v) > max ||
        !api_user_valid(json_string_value(v), json_string_length(v)))
        return -1;
    *out = json_string_value(v);
    return 0;
}

int api_parse_delete(const char *text, size_t len, api_delete *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->user = "moderator";
    out->name = "Moderator";
    if (!len) return 0;
    /* duplicate keys refused as in every body (docs/api.md); U+0000 and a
     * raw NUL byte (see load) too; an integer beyond 64 bits is JSON (see
     * load) */
    json_t *o = memchr(text, 0, len) ? NULL : frame_json_load(text, len, JSON_REJECT_DUPLICATES, NULL, 0, NULL);
    out->root = o;
    if (!json_is_object(o) || opt_text(o, "user", &out->user, API_USER_MAX) < 0 ||
        opt_text(o, "name", &out->name, API_USER_MAX) < 0 ||
        (json_object_get(o, "reason") && !json_is_string(json_object_get(o, "reason")))) {
        api_delete_clear(out);
        return fail(err, errlen, "%s", "body: an object with optional string fields reason, user, name, id");
    }
    json_t *id = json_object_get(o, "id");
    if (id && (!json_is_string(id) || !client_id_valid(json_string_value(id), json_string_length(id)))) {
        api_delete_clear(out);
        return fail(err, errlen, "%s", "id must be a string of 1-64 characters");
    }
    if (id) out->id = json_string_value(id);
    if (json_is_string(json_object_get(o, "reason"))) out->reason = json_string_value(json_object_get(o, "reason"));
    return 0;
}

void api_delete_clear(api_delete *d)
{
    json_decref(d->root);
    memset(d, 0, sizeof *d);
}
