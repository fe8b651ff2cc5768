/* redis_slot: see redis_slot.h. */
#include "redis_slot.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint16_t crc_table[256];
static int crc_ready;

static void crc_init(void)
{
    for (int i = 0; i < 256; i++) {
        uint16_t c = (uint16_t)(i << 8);
        for (int k = 0; k < 8; k++) c = (uint16_t)(c & 0x8000 ? (c << 1) ^ 0x1021 : c << 1);
        crc_table[i] = c;
    }
    crc_ready = 1;
}

uint16_t redis_crc16(const char *s, size_t len)
{
    if (!crc_ready) crc_init();
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++)
        crc = (uint16_t)((crc << 8) ^ crc_table[((crc >> 8) ^ (uint8_t)s[i]) & 0xff]);
    return crc;
}

int redis_key_slot(const char *key, size_t len)
{
    const char *open = memchr(key, '{', len);
    if (open) {
        size_t rest = len - (size_t)(open - key) - 1;
        const char *close = memchr(open + 1, '}', rest);
        if (close && close > open + 1)
            return redis_crc16(open + 1, (size_t)(close - open - 1)) & (REDIS_SLOTS - 1);
    }
    return redis_crc16(key, len) & (REDIS_SLOTS - 1);
}

int redis_room_slot(const char *room)
{
    /* room names never contain braces (room_name_valid), so the tag of
     * "chat:{room}:..." is the room itself */
    return redis_crc16(room, strlen(room)) & (REDIS_SLOTS - 1);
}

static char tags[REDIS_SLOTS][REDIS_SLOT_TAG_MAX];
static int tags_ready;

static void tags_build(void)
{
    static const char al[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    const int na = (int)sizeof al - 1;
    int left = REDIS_SLOTS;
    char s[REDIS_SLOT_TAG_MAX];
    s[0] = '~';
    for (int len = 1; len <= REDIS_SLOT_TAG_MAX - 2 && left; len++) {
        int idx[REDIS_SLOT_TAG_MAX] = {0};
        for (;;) {
            for (int i = 0; i < len; i++) s[1 + i] = al[idx[i]];
            s[1 + len] = 0;
            int slot = redis_crc16(s, (size_t)len + 1) & (REDIS_SLOTS - 1);
            if (!tags[slot][0]) {
                memcpy(tags[slot], s, (size_t)len + 2);
                if (--left == 0) break;
            }
            int i = len - 1;
            while (i >= 0 && ++idx[i] == na) idx[i--] = 0;
            if (i < 0) break;
        }
    }
    tags_ready = 1;
}

const char *redis_slot_tag(int slot)
{
    if (slot < 0 || slot >= REDIS_SLOTS) return NULL;
    if (!tags_ready) tags_build();
    return tags[slot][0] ? tags[slot] : NULL;
}

char **redis_slot_keys(int cluster, const uint16_t (*ranges)[2], int nranges, const char *name,
                       size_t *n)
{
    size_t count = 1;
    if (cluster) {
        count = 0;
        for (int i = 0; i < nranges; i++)
            if (ranges[i][1] >= ranges[i][0]) count += (size_t)(ranges[i][1] - ranges[i][0] + 1);
    }
    *n = 0;
    if (!count) return NULL;
    size_t each = strlen("chat:{}:") + REDIS_SLOT_TAG_MAX + strlen(name) + 1;
    char **k = malloc(count * (sizeof *k + each));
    if (!k) return NULL;
    char *text = (char *)(k + count);
    if (!cluster) {
        snprintf(text, each, "chat:%s", name);
        k[0] = text;
    } else {
        size_t j = 0;
        for (int i = 0; i < nranges; i++)
            for (int sl = ranges[i][0]; sl <= ranges[i][1]; sl++, j++) {
                k[j] = text + j * each;
                snprintf(k[j], each, "chat:{%s}:%s", redis_slot_tag(sl), name);
            }
    }
    *n = count;
    return k;
}
