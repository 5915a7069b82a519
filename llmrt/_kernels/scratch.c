/* Per-thread scratch kept across kernel calls.  Prefill kernels need a few hundred KiB per call and
 * thread; freed and allocated again on every call, that memory comes back from the OS as fresh
 * zeroed pages each time (the kernel's page clearing was 8% of a 1.1B prefill).  Portable C11. */
#include <stdint.h>
#include <stdlib.h>

#include "kernels.h"

typedef struct {
    void *raw;       /* what malloc returned */
    void *aligned;   /* raw rounded up to 64 bytes */
    size_t bytes;    /* usable bytes from aligned */
} scratch_slot;

static _Thread_local scratch_slot slots[LR_SCRATCH_SLOTS];

void *lr_thread_scratch(int slot, size_t bytes) {
    if (slot < 0 || slot >= LR_SCRATCH_SLOTS) return NULL;
    scratch_slot *s = &slots[slot];
    if (s->aligned != NULL && s->bytes >= bytes) return s->aligned;
    free(s->raw);
    s->raw = s->aligned = NULL;
    s->bytes = 0;
    /* grow by half again, so a slowly growing request does not reallocate every time */
    const size_t want = bytes + bytes / 2;
    void *raw = malloc(want + 64);
    if (raw == NULL) return NULL;
    s->raw = raw;
    s->aligned = (void *)(((uintptr_t)raw + 63) & ~(uintptr_t)63);
    s->bytes = want;
    return s->aligned;
}
