/* wire: the server's outbound JSON, built by hand (jansson parses what
 * comes in; what goes out is formatted once, in the shapes of protocol.md).
 * A message frame is '{"type":"message","room":R,"seq":N,' + tail, where
 * the tail ('"id":..,"user":..,"name":..,"body":..[,"meta":{..}],"ts":..}') is also what
 * the bus carries after the seq, so a frame is built without re-parsing.
 * A message update (v2) rides the same path: its tail begins with its
 * kind ('"kind":"edit",...'), and a tail that begins with '"kind":' makes
 * a '{"type":"message_update",...' frame; the bus, the recent buffer, gap
 * fill and replay carry it unchanged (docs/architecture.md "Message
 * updates"). A react's tail as published is open: it ends with '"count":'
 * and whoever decides the count (the publish step of the bus) closes it
 * with the number and '}'.
 * Owns nothing; every builder returns memory the caller frees (or a msg
 * the caller unrefs). No state, no I/O. Layer: above msg and presence
 * (whose users it formats), below chat and http. */
#ifndef CHATD_WIRE_H
#define CHATD_WIRE_H
#include <stddef.h>
#include <stdint.h>
#include "msg.h"
#include "presence.h"

/* The tail of a message frame. malloc'd, *len set; NULL when out of memory. */
char *wire_message_tail(const char *id, const char *user, const char *name,
                        const char *body, size_t body_len, uint64_t ts, size_t *len);
/* The same with the message's optional meta (server API): meta_len bytes
 * of a JSON object, written as is after "body" (NULL or 0: no meta). */
char *wire_message_tail_meta(const char *id, const char *user, const char *name,
                             const char *body, size_t body_len, const char *meta,
                             size_t meta_len, uint64_t ts, size_t *len);
/* '{"type":"message","room":R,"seq":N,' + tail, as a frame (kind
 * MSG_MESSAGE, seq set, born now); "message_update" for an update's tail. */
msg *wire_message_frame(const char *room, uint64_t seq, const char *tail, size_t len);
/* Update kinds (the kind column of history, docs/storage.md). */
enum { WIRE_MESSAGE = 0, WIRE_EDIT = 1, WIRE_DELETE = 2, WIRE_REACT = 3 };
/* "edit", "delete", "react" (NULL for another kind). */
const char *wire_update_kind_name(int kind);
/* The tail of an update: '"kind":K,["id":..,]"target":T,"user":..,"name":..,
 * "ts":..' then ',"body":..}' (edit), '}' (delete) or ',"emoji":..,"on":B,
 * "count":' (react: open, see above; count >= 0 closes it, -1 leaves it
 * open). malloc'd, *len set; NULL when out of memory or kind unknown. */
char *wire_update_tail(int kind, const char *id, uint64_t target, const char *user,
                       const char *name, uint64_t ts, const char *body, size_t body_len,
                       const char *emoji, int on, int64_t count, size_t *len);
/* A message, or an edit of one, that a later delete erased, as a replay
 * sends it (protocol.md: history shows a deleted message with
 * "deleted":true and no body): kind WIRE_MESSAGE -> '["id":..,]"user":..,
 * "name":..,"deleted":true,"ts":..}', WIRE_EDIT -> '"kind":"edit",
 * ["id":..,]"target":T,"user":..,"name":..,"ts":..,"deleted":true}' (no
 * body, no meta). malloc'd, *len set; NULL when out of memory or another
 * kind. */
char *wire_erased_tail(int kind, const char *id, uint64_t target, const char *user,
                       const char *name, uint64_t ts, size_t *len);
/* The same for a frame built by wire_message_frame (a message or an edit
 * of room): a new frame with the erased tail and the same seq (a frame
 * that does not parse becomes an erased message with an empty user and
 * name: never the original); NULL for a delete or a react frame, and out
 * of memory. */
msg *wire_erased_frame(const char *room, const msg *m);
/* What a frame of wire_message_frame means for erasing: the seq of the
 * message whose content it carries (a message: its seq; an edit: its
 * target), else 0; *deletes = the target of a delete update, else 0. A
 * message frame is not parsed; an update's is. */
uint64_t wire_frame_content_of(const msg *m, uint64_t *deletes);
/* The target of an update frame of wire_message_frame (an edit, a delete,
 * a react), else 0 (a message, any other frame). */
uint64_t wire_update_target(const msg *m);
/* 1 when tail is an update's (it begins with '"kind":'). */
int wire_tail_is_update(const char *tail, size_t len);
/* prefix + '"users":[{"user":..,"name":..},...]}' (prefix opens the object
 * and ends with a comma, e.g. '{"room":"r",'). malloc'd; *len set. */
char *wire_users_json(const char *prefix, const presence_user *u, size_t n, size_t *len);
/* '{"type":"ack",["id":..,]"room":R,"seq":N}' into b (a message's or an
 * update's, after its durable commit); returns its length, 0 when it does
 * not fit. */
size_t wire_ack(char *b, size_t cap, const char *id, const char *room, uint64_t seq);
/* ',"epoch":"<epoch>"' into b (empty when epoch is NULL or ""); returns
 * its length (0 when it does not fit). */
size_t wire_epoch_field(char *b, size_t cap, const char *epoch);

#endif
