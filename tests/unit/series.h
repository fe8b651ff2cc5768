/* series: reading one series of the Prometheus exposition in a C unit test.
 *   series("name{labels}")  the value of the line "name{labels} <value>"
 *                           (or "name <value>" for a series without labels)
 *                           in metrics_render()'s text; -1 when absent
 * Header-only (needs metrics.h, linked with the core). */
#ifndef CHATD_TEST_SERIES_H
#define CHATD_TEST_SERIES_H
#include "metrics.h"
#include <stdlib.h>
#include <string.h>

static inline double series(const char *name_labels)
{
    size_t len;
    char *t = metrics_render(&len);
    double v = -1;
    size_t n = strlen(name_labels);
    for (const char *p = t; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, name_labels, n) == 0 && p[n] == ' ') { v = strtod(p + n + 1, NULL); break; }
    free(t);
    return v;
}

#endif
