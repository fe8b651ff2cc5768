/* lag: receipt times of the messages this node received from its own
 * clients, for the broadcast-lag metric. A message comes back from the bus
 * (its one path, also on the publishing node) as the same tail bytes, so
 * its receipt time is kept under a hash of room + tail until that delivery
 * arrives (lag_take) or the publish fails; what never comes back is
 * forgotten by lag_expire. Messages published on another node are timed
 * from their delivery on this node (clocks of machines are not compared).
 * Owns: the receipt table (the core's hmap). Layer: with publish. */
#ifndef CHATD_LAG_H
#define CHATD_LAG_H
#include <stddef.h>
#include <stdint.h>

void lag_put(const char *room, const char *tail, size_t len, uint64_t t0_ns);
/* The receipt time (0 when unknown), forgotten. */
uint64_t lag_take(const char *room, const char *tail, size_t len);
/* Forgets receipts older than max_age_ns (from the tick). */
void lag_expire(uint64_t now_ns, uint64_t max_age_ns);
/* At exit. */
void lag_shutdown(void);

#endif
