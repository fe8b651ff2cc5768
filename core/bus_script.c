/* bus_script: the server-side Lua scripts of the bus (Redis mode).
 * BUS_PUBLISH_LUA makes a publish atomic: idempotency check, seq (never
 * below the caller's floor), recent buffer, id key and PUBLISH in one step.
 * Loaded with SCRIPT LOAD, called with EVALSHA.
 *   KEYS[1] chat:{room}:seq      KEYS[2] chat:{room}:recent (zset by seq)
 *   KEYS[3] chat:{room}:id:<id>  (absent when the publish has no client id)
 *   ARGV[1] tail  ARGV[2] recent_max  ARGV[3] id ttl (s)  ARGV[4] channel
 *   ARGV[5] floor (optional, default 0): the highest seq the calling node
 *           knows was assigned in the room; the seq key is raised to it
 *           before INCR, so a Redis that lost its data (restarted empty)
 *           never hands out a seq again.
 * Returns {seq, 0} when published, {seq_of_first, 1} for a duplicate id.
 * BUS_HEAD_LUA reads the head at a (re)subscription and raises it to the
 * node's last delivered seq: KEYS[1] seq key, ARGV[1] floor; returns the
 * value found before raising (the caller compares it with its floor). */
#define _GNU_SOURCE
#include "bus_int.h"

const char BUS_PUBLISH_LUA[] =
    "local idk = KEYS[3]\n"
    "if idk then\n"
    "  local old = redis.call('GET', idk)\n"
    "  if old then return {tonumber(old), 1} end\n"
    "end\n"
    "local floor = tonumber(ARGV[5] or '0') or 0\n"
    "if floor > 0 and (tonumber(redis.call('GET', KEYS[1]) or '0') or 0) < floor then\n"
    "  redis.call('SET', KEYS[1], ARGV[5])\n"
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

const char BUS_HEAD_LUA[] =
    "local cur = tonumber(redis.call('GET', KEYS[1]) or '0') or 0\n"
    "local floor = tonumber(ARGV[1]) or 0\n"
    "if cur < floor then redis.call('SET', KEYS[1], ARGV[1]) end\n"
    "return cur\n";
