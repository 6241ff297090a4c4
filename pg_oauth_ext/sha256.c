/*-------------------------------------------------------------------------
 *
 * sha256.c
 *	  SHA-256 (FIPS 180-4) for the decision cache's token hash.
 *
 * PostgreSQL built with OpenSSL hashes through EVP, and the first EVP digest
 * in a freshly forked backend costs ~100 microseconds (OpenSSL's per-process
 * set-up after fork), even when the postmaster used it before.  A login
 * hashes exactly one token, so it would pay that every time.  This plain
 * implementation has no set-up and is checked against hashlib by the tests
 * (oauth._sha256).
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include "fmgr.h"
#include "utils/builtins.h"

PG_FUNCTION_INFO_V1(pg_oauth_fn_sha256);

static const uint32 round_constants[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2
};

static inline uint32
rotr(uint32 x, int n)
{
	return (x >> n) | (x << (32 - n));
}

/* One 64-byte block into the running state. */
static void
compress(uint32 state[8], const uint8 *block)
{
	uint32		w[64];
	uint32		a, b, c, d, e, f, g, h;
	int			t;

	for (t = 0; t < 16; t++)
		w[t] = ((uint32) block[4 * t] << 24) | ((uint32) block[4 * t + 1] << 16) |
			((uint32) block[4 * t + 2] << 8) | (uint32) block[4 * t + 3];
	for (t = 16; t < 64; t++)
	{
		uint32		s0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);
		uint32		s1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);

		w[t] = w[t - 16] + s0 + w[t - 7] + s1;
	}

	a = state[0];
	b = state[1];
	c = state[2];
	d = state[3];
	e = state[4];
	f = state[5];
	g = state[6];
	h = state[7];
	for (t = 0; t < 64; t++)
	{
		uint32		sum1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
		uint32		choose = (e & f) ^ (~e & g);
		uint32		t1 = h + sum1 + choose + round_constants[t] + w[t];
		uint32		sum0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
		uint32		majority = (a & b) ^ (a & c) ^ (b & c);
		uint32		t2 = sum0 + majority;

		h = g;
		g = f;
		f = e;
		e = d + t1;
		d = c;
		c = b;
		b = a;
		a = t1 + t2;
	}
	state[0] += a;
	state[1] += b;
	state[2] += c;
	state[3] += d;
	state[4] += e;
	state[5] += f;
	state[6] += g;
	state[7] += h;
	/* the schedule is derived from the token: leave none of it on the stack */
	explicit_bzero(w, sizeof(w));
}

void
pg_oauth_sha256(const void *data, size_t len, uint8 out[PG_OAUTH_TOKEN_HASH_LEN])
{
	uint32		state[8] = {
		0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
		0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19
	};
	const uint8 *p = data;
	size_t		left = len;
	uint8		tail[128];
	size_t		tail_len;
	uint64		bits = (uint64) len * 8;
	int			i;

	for (; left >= 64; p += 64, left -= 64)
		compress(state, p);

	/* the rest, 0x80, zeros, and the length in bits: one or two blocks */
	memset(tail, 0, sizeof(tail));
	memcpy(tail, p, left);
	tail[left] = 0x80;
	tail_len = (left < 56) ? 64 : 128;
	for (i = 0; i < 8; i++)
		tail[tail_len - 1 - i] = (uint8) (bits >> (8 * i));
	compress(state, tail);
	if (tail_len == 128)
		compress(state, tail + 64);
	explicit_bzero(tail, sizeof(tail));

	for (i = 0; i < 8; i++)
	{
		out[4 * i] = (uint8) (state[i] >> 24);
		out[4 * i + 1] = (uint8) (state[i] >> 16);
		out[4 * i + 2] = (uint8) (state[i] >> 8);
		out[4 * i + 3] = (uint8) state[i];
	}
}

/* oauth._sha256(bytea): lets the tests compare this with another implementation. */
Datum
pg_oauth_fn_sha256(PG_FUNCTION_ARGS)
{
	bytea	   *in = PG_GETARG_BYTEA_PP(0);
	bytea	   *result = palloc(VARHDRSZ + PG_OAUTH_TOKEN_HASH_LEN);

	pg_oauth_sha256(VARDATA_ANY(in), VARSIZE_ANY_EXHDR(in), (uint8 *) VARDATA(result));
	SET_VARSIZE(result, VARHDRSZ + PG_OAUTH_TOKEN_HASH_LEN);
	PG_RETURN_BYTEA_P(result);
}
