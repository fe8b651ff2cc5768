/* publish_owner: the list head by which an owner (a connection, an HTTP
 * request) holds its publishes in flight. publish.c alone links, unlinks
 * and detaches them (publish_start, publish_owner_drop: publish.h); it is
 * apart so an owner's struct (conn.h) can embed it without including the
 * publish path above it. Owns nothing; no code. */
#ifndef CHATD_PUBLISH_OWNER_H
#define CHATD_PUBLISH_OWNER_H

struct publish_op;
typedef struct publish_owner { struct publish_op *head; } publish_owner;

#endif
