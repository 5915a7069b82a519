/* AVX2 int8 prefill on widened weights, included by panel_gemm.h when the includer sets PN_WIDE8 (after
 * the tile geometry, before the tiles).
 *
 * The int8 step of panel256.h issues three multiply-pipe instructions per 32 products (sign, maddubs,
 * madd; 68 GMAC/s on a Zen 4 core, its maddubs + madd part alone 117), but madd on int16 both ways needs
 * two.  So each chunk of a panel a prefill pass reads is widened once to int16 (pn_widen8, into the
 * thread's stack) and read by every row tile against activations packed as int16: the same products,
 * summed exactly, PN_RBW rows x PN_NSBW slots per tile (probe on Zen 4, 1.1B shapes, one core: 82-85
 * GMAC/s against 67-69 for the int8 step). */
#ifndef LLMRT_PANEL_WIDE8_H
#define LLMRT_PANEL_WIDE8_H

/* The most blocks a widened chunk holds (32 KiB of stack): groups of more run the int8 step. */
#define PN_WIDE_MAXB 32
#define PN_WIDE_VECS (LR_QK / 2 * PN_SLOTS)   /* vectors per widened block */

/* One block of an int8 panel (8 vectors of 16 rows x 4 inputs, stored q + 128) as int16, [pair j of
 * inputs][slot][8 rows x 2 inputs]: a madd against the dword of a row's inputs 2j, 2j + 1 gives the
 * 8 rows' sums of that pair in its lanes. */
LR_INLINE void pn_widen8(__m256i *dst, const uint8_t *blk) {
    /* within each 128-bit lane (4 rows x 4 inputs): inputs 0, 1 of the 4 rows, then inputs 2, 3 */
    const __m256i pairs = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
                                           0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
    LR_UNROLL for (int v = 0; v < 8; v++)
        LR_UNROLL for (int s = 0; s < PN_SLOTS; s++) {
            const __m256i q = _mm256_xor_si256(pn_load(blk + 64 * v + s * PN_SLOT_BYTES), _mm256_set1_epi8((char)0x80));
            /* qwords (lane 0 inputs 0-1, lane 1 inputs 0-1, lane 0 inputs 2-3, lane 1 inputs 2-3) */
            const __m256i o = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(q, pairs), 0xD8);
            dst[(2 * v) * PN_SLOTS + s] = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(o));
            dst[(2 * v + 1) * PN_SLOTS + s] = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(o, 1));
        }
}
/* The exact int32 sums sum(q * x) of one widened block for rows xo[0..R) (int16) x slots s0 .. s0+NS. */
LR_INLINE void pn_block_sums_wide(pn_vi is[PN_RMAX][PN_SMAX], const __m256i *wb, const int16_t *const xo[PN_RMAX],
                                  const int s0, const int R, const int NS) {
    LR_UNROLL for (int r = 0; r < R; r++)
        LR_UNROLL for (int s = 0; s < NS; s++) is[r][s] = _mm256_setzero_si256();
    LR_UNROLL for (int j = 0; j < LR_QK / 2; j++) {
        __m256i wv[PN_SMAX];
        LR_UNROLL for (int s = 0; s < NS; s++) wv[s] = _mm256_loadu_si256(wb + j * PN_SLOTS + s0 + s);
        LR_UNROLL for (int r = 0; r < R; r++) {
            int32_t x2;
            memcpy(&x2, xo[r] + 2 * j, 4);
            const __m256i x = _mm256_set1_epi32(x2);
            LR_UNROLL for (int s = 0; s < NS; s++) {
                is[r][s] = _mm256_add_epi32(is[r][s], _mm256_madd_epi16(wv[s], x));
                LR_PIN(is[r][s]);
            }
        }
    }
}

#endif
