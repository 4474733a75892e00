#ifndef PC_BASE64_H
#define PC_BASE64_H
#include <stddef.h>

/*
 * base64 (RFC 4648 section 4, the standard alphabet), strict: no whitespace,
 * no line breaks, padding required and checked, the unused bits of the last
 * quantum zero. What SASL (RFC 4422), SCRAM and the stored keys use.
 */

/* characters base64_encode() writes for n bytes, without the NUL */
#define BASE64_ENCODED_LEN(n) (((n) + 2) / 3 * 4)
/* the most bytes a text of n characters decodes to (without the NUL) */
#define BASE64_DECODED_MAX(n) ((n) / 4 * 3)

/* encode n bytes into out, which holds BASE64_ENCODED_LEN(n) + 1 (NUL added);
 * returns the length written */
size_t base64_encode(const void *in, size_t n, char *out);

/* decode the n characters at in into out (cap bytes, room for a NUL that is
 * added after the data: a decoded length of cap or more fails). -1 on any
 * character outside the alphabet (NUL, CR, LF, space included), a length not
 * a multiple of 4, misplaced or surplus padding, non-zero trailing bits, or
 * too small a cap; out and *len_r are then unspecified / untouched. */
int base64_decode(const char *in, size_t n, void *out, size_t cap, size_t *len_r)
    __attribute__((warn_unused_result));

#endif
