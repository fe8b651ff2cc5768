/* bus_script: the one server-side Lua script of the bus (Redis mode). It
 * makes a publish atomic: idempotency check, seq, recent buffer, id key and
 * PUBLISH in one step. Loaded with SCRIPT LOAD, called with EVALSHA.
 *   KEYS[1] chat:{room}:seq      KEYS[2] chat:{room}:recent (zset by seq)
 *   KEYS[3] chat:{room}:id:<id>  (absent when the publish has no client id)
 *   ARGV[1] tail  ARGV[2] recent_max  ARGV[3] id ttl (s)  ARGV[4] channel
 * Returns {seq, 0} when published, {seq_of_first, 1} for a duplicate id. */
#define _GNU_SOURCE
#include "bus_int.h"

const char BUS_PUBLISH_LUA[] =
    "local idk = KEYS[3]\n"
    "if idk then\n"
    "  local old = redis.call('GET', idk)\n"
    "  if old then return {tonumber(old), 1} end\n"
    "end\n"
    "local seq = redis.call('INCR', KEYS[1])\n"
    "local m = string.format('%d', seq) .. '\\n' .. ARGV[1]\n"
    "redis.call('ZADD', KEYS[2], seq, m)\n"
    "local keep = tonumber(ARGV[2])\n"
    "if redis.call('ZCARD', KEYS[2]) > keep then\n"
    "  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(keep + 1))\n"
    "end\n"
    "if idk then redis.call('SET', idk, seq, 'EX', tonumber(ARGV[3])) end\n"
    "redis.call('PUBLISH', ARGV[4], m)\n"
    "return {seq, 0}\n";
