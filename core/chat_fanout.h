/* chat_fanout: bus and presence deliveries to this node's members (see
 * chat_fanout.c). These are the bus_handlers / presence_handlers that
 * server.c wires. */
#ifndef CHATD_CHAT_FANOUT_H
#define CHATD_CHAT_FANOUT_H
#include <stddef.h>
#include <stdint.h>

void chat_bus_message(void *ud, const char *room, uint64_t seq, const char *tail, size_t len);
void chat_bus_gap(void *ud, const char *room, uint64_t from, uint64_t to);
void chat_bus_emit(void *ud, const char *room, const char *kind, const char *data, size_t len);
void chat_bus_ready(void *ud, int ready);
void chat_presence_transition(void *ud, const char *room, const char *event,
                              const char *user, const char *name);

#endif
