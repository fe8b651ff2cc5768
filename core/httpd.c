/* httpd: see httpd.h. */
#define _GNU_SOURCE
#include "httpd.h"
#include "metrics.h"
#include "util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

static const struct { int m; enum lws_token_indexes tok; const char *name; } METHODS[] = {
    {HM_GET, WSI_TOKEN_GET_URI, "GET"},
    {HM_POST, WSI_TOKEN_POST_URI, "POST"},
    {HM_PUT, WSI_TOKEN_PUT_URI, "PUT"},
    {HM_DELETE, WSI_TOKEN_DELETE_URI, "DELETE"},
    {HM_PATCH, WSI_TOKEN_PATCH_URI, "PATCH"},
    {HM_HEAD, WSI_TOKEN_HEAD_URI, "HEAD"},
    {HM_OPTIONS, WSI_TOKEN_OPTIONS_URI, "OPTIONS"},
};

int httpd_method(struct lws *wsi)
{
    for (size_t i = 0; i < sizeof METHODS / sizeof METHODS[0]; i++)
        if (lws_hdr_total_length(wsi, METHODS[i].tok) > 0) return METHODS[i].m;
    return HM_OTHER;
}

const char *httpd_method_name(int m)
{
    for (size_t i = 0; i < sizeof METHODS / sizeof METHODS[0]; i++)
        if (METHODS[i].m == m) return METHODS[i].name;
    return "OTHER";
}

int httpd_method_allowed(unsigned allow, int m)
{
    if (m == HM_HEAD && (allow & (1u << HM_GET))) m = HM_GET;   /* HEAD: a GET without its body */
    return m >= 0 && m < HM_OTHER && (allow & (1u << m)) != 0;
}

void httpd_allow_header(unsigned allow, char *out, size_t n)
{
    size_t o = 0;
    out[0] = 0;
    for (int m = 0; m < HM_OTHER; m++) {
        int on = (allow & (1u << m)) || (m == HM_HEAD && (allow & (1u << HM_GET)));
        if (on) o += (size_t)snprintf(out + o, o < n ? n - o : 0, "%s%s", o ? ", " : "", httpd_method_name(m));
    }
}

int64_t httpd_content_length(struct lws *wsi)
{
    char v[32];
    int n = lws_hdr_copy(wsi, v, sizeof v, WSI_TOKEN_HTTP_CONTENT_LENGTH);
    if (n <= 0) return lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0 ? -2 : -1;
    return httpd_parse_content_length(v, (size_t)n);
}

int64_t httpd_parse_content_length(const char *v, size_t n)
{
    int64_t x = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9' || x > (INT64_MAX - 9) / 10) return -2;
        x = x * 10 + (v[i] - '0');
    }
    return x;
}

int httpd_chunked(struct lws *wsi)
{
    return lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0;
}

int httpd_expects_continue(struct lws *wsi)
{
    /* (RFC 9110 10.1.1 has an HTTP/1.0 request's expectation ignored; lws
     * does not expose the request's version, and 1.0 clients do not send it) */
    char v[32];
    int n = lws_hdr_copy(wsi, v, sizeof v, WSI_TOKEN_HTTP_EXPECT);
    return n > 0 && strcasecmp(v, "100-continue") == 0;
}

int httpd_continue(struct lws *wsi)
{
    static const char line[] = "HTTP/1.1 100 Continue\r\n\r\n";
    unsigned char buf[LWS_PRE + sizeof line];
    memcpy(buf + LWS_PRE, line, sizeof line - 1);
    /* before any response header: raw bytes on the HTTP/1.1 stream */
    return lws_write(wsi, buf + LWS_PRE, sizeof line - 1, LWS_WRITE_HTTP) == (int)(sizeof line - 1) ? 0 : -1;
}

static const char *reason_phrase(unsigned status)
{
    switch (status) {
    case 200: return "OK";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Status";
    }
}

static metric_counter *m_class[5];

static void count(unsigned status)
{
    /* the same series as http.c's answers: every HTTP answer by class */
    static unsigned seen;
    if (metrics_register_due(&seen)) {
        static const char *codes[] = {"2xx", "3xx", "4xx", "5xx", "other"};
        for (int i = 0; i < 5; i++) {
            char l[32];
            snprintf(l, sizeof l, "code=\"%s\"", codes[i]);
            m_class[i] = metrics_counter("chat_http_requests_total", "HTTP responses, by status class", l);
        }
    }
    metric_inc(m_class[status >= 200 && status < 600 ? status / 100 - 2 : 4]);
}

int httpd_reply(struct lws *wsi, unsigned status, const char *ctype, const char *body,
                size_t len, const char *const *hdrs, int close)
{
    return httpd_reply_ex(wsi, status, ctype, body, len, hdrs, close, 0);
}

int httpd_reply_ex(struct lws *wsi, unsigned status, const char *ctype, const char *body,
                   size_t len, const char *const *hdrs, int close, int no_body)
{
    count(status);
    /* written by hand (like ws.c's refusals): lws' header helpers would
     * answer an HTTP/1.0 request line the same way, and we need the
     * connection header to match what we do next */
    size_t hl = 256 + strlen(ctype);
    for (int i = 0; hdrs && hdrs[i]; i += 2) hl += strlen(hdrs[i]) + strlen(hdrs[i + 1]) + 4;
    unsigned char *b = malloc(LWS_PRE + hl + len);
    if (!b) return -1;
    char *p = (char *)b + LWS_PRE;
    size_t o;
    if (status == 204) {
        /* RFC 9110 8.6, 15.3.5: no content, no Content-Length */
        o = (size_t)snprintf(p, hl, "HTTP/1.1 204 No Content\r\ncache-control: no-store\r\n");
        len = 0;
    } else {
        o = (size_t)snprintf(p, hl, "HTTP/1.1 %u %s\r\ncontent-type: %s\r\ncontent-length: %zu\r\n"
                                    "cache-control: no-store\r\n",
                             status, reason_phrase(status), ctype, len);
    }
    for (int i = 0; hdrs && hdrs[i]; i += 2)
        o += (size_t)snprintf(p + o, hl - o, "%s: %s\r\n", hdrs[i], hdrs[i + 1]);
    if (close) o += (size_t)snprintf(p + o, hl - o, "connection: close\r\n");
    o += (size_t)snprintf(p + o, hl - o, "\r\n");
    if (no_body) len = 0;
    memcpy(p + o, body, len);
    int w = lws_write(wsi, (unsigned char *)p, o + len, LWS_WRITE_HTTP_FINAL);
    free(b);
    if (w < 0 || close) return -1;
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

void httpd_linger(struct lws *wsi, int secs)
{
    int fd = lws_get_socket_fd(wsi);
    if (fd >= 0) shutdown(fd, SHUT_WR);
    lws_set_timeout(wsi, PENDING_TIMEOUT_HTTP_CONTENT, secs);
}

char *httpd_error_body(const char *code, const char *message, size_t *len)
{
    size_t ml = strlen(message), cl = strlen(code);
    size_t cap = 6 * (ml + cl) + 48;
    char *b = malloc(cap);
    if (!b) return NULL;
    size_t o = (size_t)snprintf(b, cap, "{\"error\":{\"code\":");
    o += (size_t)json_escape(b + o, cap - o, code, cl);
    memcpy(b + o, ",\"message\":", 11);
    o += 11;
    o += (size_t)json_escape(b + o, cap - o, message, ml);
    memcpy(b + o, "}}", 3);   /* and a NUL: the listener sends it as a string */
    *len = o + 2;
    return b;
}

int httpd_error(struct lws *wsi, unsigned status, const char *code, const char *message,
                const char *const *hdrs, int close)
{
    size_t len;
    char *b = httpd_error_body(code, message, &len);
    if (!b) return -1;
    int r = httpd_reply(wsi, status, "application/json", b, len, hdrs, close);
    free(b);
    return r;
}

int httpd_body_add(httpd_body *b, const void *in, size_t len)
{
    if (len > b->max || b->len > b->max - len) return -1;
    if (b->len + len + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 1024;
        while (nc < b->len + len + 1) nc *= 2;
        char *nb = realloc(b->buf, nc);
        if (!nb) return -2;
        b->buf = nb;
        b->cap = nc;
    }
    memcpy(b->buf + b->len, in, len);
    b->len += len;
    b->buf[b->len] = 0;
    return 0;
}

void httpd_body_free(httpd_body *b)
{
    free(b->buf);
    b->buf = NULL;
    b->len = b->cap = 0;
}

/* ---- query arguments and the bearer token (the matching is pure: see
 * httpd.h, driven by the fuzz target tests/fuzz/fuzz_request.c) ---- */

/* value v[0..vl) into out, never truncated */
static int copy_value(const char *v, size_t vl, char *out, size_t outlen)
{
    if (!outlen) return -1;
    if (vl >= outlen) { out[0] = 0; return -1; }
    memcpy(out, v, vl);
    out[vl] = 0;
    return 1;
}

int httpd_arg_match(const char *frag, size_t n, const char *name, char *out, size_t outlen)
{
    size_t nl = strlen(name);
    if (n <= nl || strncmp(frag, name, nl) != 0 || frag[nl] != '=') return 0;
    return copy_value(frag + nl + 1, n - nl - 1, out, outlen);
}

int httpd_bearer(const char *h, size_t n, char *out, size_t outlen)
{
    /* RFC 6750 2.1: "Bearer" 1*SP b64token (tabs too, like the server
     * API's apikey_from_header; blanks after the token are not part of it) */
    if (n <= 7 || strncasecmp(h, "Bearer", 6) != 0 || (h[6] != ' ' && h[6] != '\t')) return 0;
    size_t i = 6;
    while (i < n && (h[i] == ' ' || h[i] == '\t')) i++;
    while (n > i && (h[n - 1] == ' ' || h[n - 1] == '\t')) n--;
    if (i == n) return 0;
    return copy_value(h + i, n - i, out, outlen);
}

int httpd_arg(struct lws *wsi, const char *name, char *out, size_t outlen)
{
    char small[512];
    if (outlen) out[0] = 0;
    for (int i = 0; i < 32; i++) {
        /* a fragment of any length the head allowed: one over a fixed
         * buffer was taken for the end of the arguments, so a token over
         * 8 KiB answered "missing token" */
        int fl = lws_hdr_fragment_length(wsi, WSI_TOKEN_HTTP_URI_ARGS, i);
        if (fl <= 0) {
            if (lws_hdr_copy_fragment(wsi, small, sizeof small, WSI_TOKEN_HTTP_URI_ARGS, i) < 0) break;
            continue;   /* an empty fragment */
        }
        char *frag = (size_t)fl < sizeof small ? small : malloc((size_t)fl + 1);
        if (!frag) return HTTPD_ARG_NOMEM;
        int n = lws_hdr_copy_fragment(wsi, frag, fl + 1, WSI_TOKEN_HTTP_URI_ARGS, i);
        int r = n < 0 ? 0 : httpd_arg_match(frag, (size_t)n, name, out, outlen);
        if (frag != small) free(frag);
        if (n < 0) break;
        if (r) return r;
    }
    return 0;
}
