/* Portable fp16 / bf16 conversions (no ISA requirement; tiers may use F16C instead). */
#ifndef LLMRT_HALF_H
#define LLMRT_HALF_H

#include <stdint.h>
#include <string.h>

static inline float lr_bits_to_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t lr_f32_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static inline float lr_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1f) return lr_bits_to_f32(sign | 0x7f800000u | (man << 13));   /* inf / nan */
    if (exp == 0) {
        if (man == 0) return lr_bits_to_f32(sign);
        /* subnormal: value = man * 2^-24 */
        float v = (float)man * 5.9604644775390625e-08f;
        return sign ? -v : v;
    }
    return lr_bits_to_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

/* Round to nearest even, overflow to inf, NaN preserved. */
static inline uint16_t lr_f32_to_f16(float f) {
    uint32_t x = lr_f32_to_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);               /* >= 65520 -> inf */
    if (ax < 0x38800000u) {                                                 /* subnormal or zero */
        float v = lr_bits_to_f32(ax) * 16777216.0f;                         /* scale by 2^24 */
        uint32_t m = (uint32_t)v;
        float rem = v - (float)m;
        if (rem > 0.5f || (rem == 0.5f && (m & 1u))) m++;
        return (uint16_t)(sign | m);
    }
    uint32_t r = ax + 0xfffu + ((ax >> 13) & 1u) - (112u << 23);
    return (uint16_t)(sign | (r >> 13));
}

/* fp32 -> bf16 bits, nearest-even (NaN kept quiet). */
static inline uint16_t lr_f32_to_bf16(float f) {
    uint32_t x = lr_f32_to_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}
static inline float lr_bf16_to_f32(uint16_t b) { return lr_bits_to_f32((uint32_t)b << 16); }
static inline float lr_round_bf16(float f) { return lr_bf16_to_f32(lr_f32_to_bf16(f)); }

#endif
