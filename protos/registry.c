#include "protos/registry.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "registry_table.h"

static const ProtobufCMessageDescriptor *table[] = {PB_REGISTRY_TABLE};
#define N_TABLE (sizeof(table) / sizeof(table[0]))

static pthread_once_t sorted_once = PTHREAD_ONCE_INIT;

static int by_name(const void *a, const void *b)
{
    const ProtobufCMessageDescriptor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

static void sort_table(void)
{
    qsort(table, N_TABLE, sizeof(table[0]), by_name);
}

const ProtobufCMessageDescriptor *pb_registry_find(const char *full_name)
{
    pthread_once(&sorted_once, sort_table);
    size_t lo = 0, hi = N_TABLE;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(full_name, table[mid]->name);
        if (c == 0)
            return table[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

const ProtobufCMessageDescriptor *pb_registry_find_type_url(const char *type_url)
{
    const char *slash = strrchr(type_url, '/');
    return pb_registry_find(slash ? slash + 1 : type_url);
}

size_t pb_registry_count(void)
{
    return N_TABLE;
}

const ProtobufCMessageDescriptor *pb_registry_at(size_t i)
{
    pthread_once(&sorted_once, sort_table);
    return i < N_TABLE ? table[i] : NULL;
}
