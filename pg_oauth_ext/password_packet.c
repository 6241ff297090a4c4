/*-------------------------------------------------------------------------
 *
 * password_packet.c
 *	  On a "trust" line, ask the client for its password and read the
 *	  PasswordMessage that carries the token.
 *
 * PostgreSQL's recv_password_packet() is static and has a fixed length
 * limit, so the message is read here with pq_startmsgread()/pq_getbytes()
 * and pg_oauth.max_token_bytes as the limit: an oversized token gets a
 * reason the client can read, not a dropped connection.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include "libpq/auth.h"
#include "libpq/libpq.h"
#include "libpq/pqformat.h"
#include "storage/ipc.h"

/* A client sending more than this is cut off without reading the rest. */
#define OVERSIZE_DRAIN_LIMIT	(1024 * 1024)

/* Read and throw away n bytes of the current message. */
static void
discard_bytes(size_t n)
{
	char		buf[8192];

	while (n > 0)
	{
		size_t		chunk = Min(n, sizeof(buf));

		if (pq_getbytes(buf, chunk) == EOF)
			return;
		n -= chunk;
	}
}

/*
 * Ask for the password and read the PasswordMessage with our own limit
 * (recv_password_packet is static and has a fixed one).  Returns a palloc'd
 * NUL-terminated string; *len excludes the terminator.
 */
char *
password_packet_read(LoginAttempt *a, int *len)
{
	Port	   *port = a->port;
	int			mtype;
	uint32		netlen;
	int64		body;
	char	   *buf;

#if defined(USE_OPENSSL) && defined(SSL_OP_CLEANSE_PLAINTEXT)

	/*
	 * OpenSSL keeps the decrypted record in its read buffer until the next
	 * record overwrites it: for the whole session, when the client sends little.
	 * Cleanse it once read, from the record with the token on (OpenSSL 3.0+).
	 */
	if (port->ssl != NULL)
		SSL_set_options(port->ssl, SSL_OP_CLEANSE_PLAINTEXT);
#endif
	sendAuthRequest(port, AUTH_REQ_PASSWORD, NULL, 0);
	/* while the client answers (sendAuthRequest flushed the request) */
	role_policy_prefetch(a->role);

	pq_startmsgread();
	mtype = pq_getbyte();
	if (mtype == EOF)
	{
		/* psql hangs up here to prompt for a password: not worth a log line. */
		proc_exit(0);
	}
	if (mtype != 'p')
		ereport(FATAL,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("expected password response, got message type %d", mtype)));

	if (pq_getbytes((char *) &netlen, 4) == EOF)
		proc_exit(0);
	body = (int64) pg_ntoh32(netlen) - 4;
	if (body < 0)
		ereport(FATAL,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("invalid password packet length")));

	a->token_seen = true;
	/* body includes the terminating NUL */
	if (body > (int64) pg_oauth_max_token_bytes + 1)
	{
		/* Read it all when cheap, so the client gets our error, not a reset. */
		if (body <= OVERSIZE_DRAIN_LIMIT)
			discard_bytes((size_t) body);
		pq_endmsgread();
		login_refuse(a, "too_large",
			   psprintf("the token is %lld bytes; pg_oauth.max_token_bytes is %d",
						(long long) (body - 1), pg_oauth_max_token_bytes),
			   NULL);
	}

	buf = palloc(body + 1);
	if (body > 0 && pq_getbytes(buf, body) == EOF)
		proc_exit(0);
	pq_endmsgread();
	buf[body] = '\0';

	if (body < 2 || buf[body - 1] != '\0' || strlen(buf) != (size_t) (body - 1))
	{
		explicit_bzero(buf, body);
		login_refuse(a, "malformed", "the password is empty or not a single string",
			   "Send the JWT as the password.");
	}
	*len = (int) (body - 1);
	return buf;
}
