/* CRC32C (Castagnoli: polynomial 0x1EDC6F41, reflected 0x82F63B78, initial value
 * and final xor 0xFFFFFFFF), the checksum of every page ntshim.snapshot stores.
 *
 * Two implementations of the same function.  On x86-64 CPUs with SSE4.2 the crc32
 * instruction does 8 bytes per instruction; its latency is 3 cycles but it issues
 * one per cycle, so three independent streams over three thirds of a block keep the
 * unit busy, and the three partial CRCs are combined by "shifting" the first ones
 * over the bytes that follow them (a multiplication by x^(8n) modulo the
 * polynomial, done with four table lookups).  This is Mark Adler's well-known
 * construction (crc32c.c, 2013, zlib licence).  Everywhere else, and when a test
 * asks for it, tables do it 8 bytes at a time ("slicing by 8"). */
#include "snapshot/snapshot.h"

#include <string.h>

#if defined(__x86_64__)
#include <nmmintrin.h>
#define NTS_CRC32C_HW 1
#endif

#define POLY 0x82F63B78u /* reflected 0x1EDC6F41 */

int nts_crc32c_hardware;

/* ---- Portable: slicing by 8 ---- */

static uint32_t slice_table[8][256];

static void init_slice_table(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t crc = n;
        for (int k = 0; k < 8; k++)
            crc = crc & 1 ? (crc >> 1) ^ POLY : crc >> 1;
        slice_table[0][n] = crc;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t crc = slice_table[0][n];
        for (int k = 1; k < 8; k++) {
            crc = slice_table[0][crc & 0xff] ^ (crc >> 8);
            slice_table[k][n] = crc;
        }
    }
}

static uint64_t load_le64(const unsigned char *p)
{
    /* Byte by byte: correct on any byte order, and the compiler makes it one load on x86. */
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24 | (uint64_t)p[4] << 32 |
           (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48 | (uint64_t)p[7] << 56;
}

static uint32_t crc32c_portable(uint32_t crc, const unsigned char *p, size_t len)
{
    crc = ~crc;
    for (; len >= 8; p += 8, len -= 8) {
        uint64_t w = load_le64(p) ^ crc;
        crc = slice_table[7][w & 0xff] ^ slice_table[6][(w >> 8) & 0xff] ^ slice_table[5][(w >> 16) & 0xff] ^
              slice_table[4][(w >> 24) & 0xff] ^ slice_table[3][(w >> 32) & 0xff] ^ slice_table[2][(w >> 40) & 0xff] ^
              slice_table[1][(w >> 48) & 0xff] ^ slice_table[0][w >> 56];
    }
    while (len--)
        crc = slice_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

#ifdef NTS_CRC32C_HW

/* ---- SSE4.2: three interleaved streams ---- */

/* Block sizes of one stream: LONG for bulk data, SHORT for what is left (a 4 KiB
 * page is five rounds of three SHORT blocks and a 256-byte tail). */
#define LONG  8192
#define SHORT 256

/* shift_long[k][b]: the CRC register after LONG zero bytes, starting from byte b in
 * position k (and zeros elsewhere); likewise shift_short.  XORing four lookups
 * moves a 32-bit register over LONG (or SHORT) bytes of zeros. */
static uint32_t shift_long[4][256], shift_short[4][256];

/* GF(2) matrix (32 columns) times vector. */
static uint32_t gf2_times(const uint32_t *mat, uint32_t vec)
{
    uint32_t sum = 0;
    for (; vec; vec >>= 1, mat++)
        if (vec & 1)
            sum ^= *mat;
    return sum;
}

static void gf2_square(uint32_t *square, const uint32_t *mat)
{
    for (int n = 0; n < 32; n++)
        square[n] = gf2_times(mat, mat[n]);
}

/* The operator that runs the register over `len` zero bytes (len a power of two). */
static void zeros_operator(uint32_t *even, size_t len)
{
    uint32_t odd[32];
    odd[0] = POLY; /* one zero bit */
    for (int n = 1; n < 32; n++)
        odd[n] = 1u << (n - 1);
    gf2_square(even, odd); /* two bits */
    gf2_square(odd, even); /* four bits */
    /* Each square doubles the length: the first gives one zero byte. */
    for (;;) {
        gf2_square(even, odd);
        len >>= 1;
        if (len == 0)
            return;
        gf2_square(odd, even);
        len >>= 1;
        if (len == 0)
            break;
    }
    memcpy(even, odd, sizeof odd);
}

static void init_shift_table(uint32_t table[4][256], size_t len)
{
    uint32_t op[32];
    zeros_operator(op, len);
    for (uint32_t n = 0; n < 256; n++)
        for (int k = 0; k < 4; k++)
            table[k][n] = gf2_times(op, n << (8 * k));
}

static inline uint32_t shift(uint32_t table[4][256], uint32_t crc)
{
    return table[0][crc & 0xff] ^ table[1][(crc >> 8) & 0xff] ^ table[2][(crc >> 16) & 0xff] ^ table[3][crc >> 24];
}

__attribute__((target("sse4.2"))) static inline uint64_t step8(uint64_t crc, const unsigned char *p)
{
    uint64_t w;
    memcpy(&w, p, 8); /* unaligned load without undefined behaviour */
    return _mm_crc32_u64(crc, w);
}

/* Three streams over [p, p + 3 * block) while len allows; returns the new p. */
#define THREE_STREAMS(block, table)                                                                                    \
    while (len >= 3 * (block)) {                                                                                       \
        uint64_t crc1 = 0, crc2 = 0;                                                                                   \
        const unsigned char *end = p + (block);                                                                        \
        do {                                                                                                           \
            crc0 = step8(crc0, p);                                                                                     \
            crc1 = step8(crc1, p + (block));                                                                           \
            crc2 = step8(crc2, p + 2 * (block));                                                                       \
            p += 8;                                                                                                    \
        } while (p < end);                                                                                             \
        crc0 = shift(table, (uint32_t)crc0) ^ (uint32_t)crc1;                                                          \
        crc0 = shift(table, (uint32_t)crc0) ^ (uint32_t)crc2;                                                          \
        p += 2 * (block);                                                                                              \
        len -= 3 * (block);                                                                                            \
    }

__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42(uint32_t crc, const unsigned char *p, size_t len)
{
    uint64_t crc0 = ~crc;
    for (; len && ((uintptr_t)p & 7); len--) /* to an 8-byte boundary */
        crc0 = _mm_crc32_u8((uint32_t)crc0, *p++);
    THREE_STREAMS(LONG, shift_long)
    THREE_STREAMS(SHORT, shift_short)
    for (; len >= 8; p += 8, len -= 8)
        crc0 = step8(crc0, p);
    for (; len; len--)
        crc0 = _mm_crc32_u8((uint32_t)crc0, *p++);
    return ~(uint32_t)crc0;
}

#endif /* NTS_CRC32C_HW */

uint32_t nts_crc32c(uint32_t crc, const void *buf, size_t len, int portable)
{
#ifdef NTS_CRC32C_HW
    if (nts_crc32c_hardware && !portable)
        return crc32c_sse42(crc, buf, len);
#endif
    return crc32c_portable(crc, buf, len);
}

/* ---- Python ---- */

/* Inputs at least this large are checksummed without the GIL (≈ 5 µs of work on
 * the hardware path: below it, giving the GIL away costs more than it frees). */
#define GIL_FREE_BYTES (64 * 1024)

PyObject *nts_py_crc32c(PyObject *mod, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"", "value", "portable", NULL};
    Py_buffer data;
    PyObject *value_obj = NULL;
    int portable = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*|O$p:crc32c", kwlist, &data, &value_obj, &portable))
        return NULL;
    unsigned long value = 0;
    if (value_obj) {
        if (!PyLong_Check(value_obj)) {
            PyErr_Format(PyExc_TypeError, "value must be an int, not %.100s", Py_TYPE(value_obj)->tp_name);
            goto fail;
        }
        value = PyLong_AsUnsignedLong(value_obj);
        if ((value == (unsigned long)-1 && PyErr_Occurred()) || value > 0xFFFFFFFFul) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "value must be a CRC32C in [0, 2**32), got %R", value_obj);
            goto fail;
        }
    }
    uint32_t crc;
    if (data.len >= GIL_FREE_BYTES) {
        Py_BEGIN_ALLOW_THREADS
        crc = nts_crc32c((uint32_t)value, data.buf, (size_t)data.len, portable);
        Py_END_ALLOW_THREADS
    } else {
        crc = nts_crc32c((uint32_t)value, data.buf, (size_t)data.len, portable);
    }
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLong(crc);
fail:
    PyBuffer_Release(&data);
    return NULL;
}

PyObject *nts_py_crc32c_pages(PyObject *mod, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"", "page_size", "portable", NULL};
    Py_buffer data;
    Py_ssize_t page_size;
    int portable = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*n|$p:crc32c_pages", kwlist, &data, &page_size, &portable))
        return NULL;
    if (page_size <= 0) {
        PyErr_Format(PyExc_ValueError, "page_size must be positive, got %zd", page_size);
        PyBuffer_Release(&data);
        return NULL;
    }
    size_t len = (size_t)data.len, size = (size_t)page_size, pages = len / size + (len % size != 0);
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(pages * 4));
    if (!out) {
        PyBuffer_Release(&data);
        return NULL;
    }
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    const unsigned char *p = data.buf;
    PyThreadState *state = len >= GIL_FREE_BYTES ? PyEval_SaveThread() : NULL;
    for (size_t i = 0; i < pages; i++, o += 4) {
        size_t n = i + 1 < pages ? size : len - i * size; /* the last page may be partial */
        uint32_t crc = nts_crc32c(0, p + i * size, n, portable);
        o[0] = (unsigned char)crc, o[1] = (unsigned char)(crc >> 8), o[2] = (unsigned char)(crc >> 16),
        o[3] = (unsigned char)(crc >> 24); /* little-endian whatever the CPU's order */
    }
    if (state)
        PyEval_RestoreThread(state);
    PyBuffer_Release(&data);
    return out;
}

int nts_snapshot_module_init(PyObject *module)
{
    init_slice_table();
#ifdef NTS_CRC32C_HW
    init_shift_table(shift_long, LONG);
    init_shift_table(shift_short, SHORT);
    __builtin_cpu_init();
    nts_crc32c_hardware = __builtin_cpu_supports("sse4.2") != 0;
#endif
    if (nts_freeze_module_init(module) < 0)
        return -1;
    return PyModule_AddIntConstant(module, "CRC32C_HARDWARE", nts_crc32c_hardware);
}
