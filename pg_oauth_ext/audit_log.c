/*-------------------------------------------------------------------------
 *
 * audit_log.c
 *	  One structured log line per login attempt, and the same record handed
 *	  to the housekeeper through a shared-memory ring for oauth.audit_log.
 *
 * A login never waits on the table: it copies its record into the ring and
 * goes on.  When the ring is full the oldest record is overwritten and
 * counted as dropped (the log line still exists).  The identity of a record
 * is kept whole in identity_store.c, freed by whoever takes the record out.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include "access/xlog.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/shmem.h"
#include "utils/elog.h"

#define AUDIT_RING_SIZE 512

typedef struct AuditSlot
{
	AuditRecord rec;			/* its identity pointers are NULL here */
	dsa_pointer identity;		/* issuer, subject, token id; invalid: none or not kept */
} AuditSlot;

typedef struct AuditRing
{
	LWLock	   *lock;
	uint64		head;			/* next record written */
	uint64		tail;			/* next record taken */
	uint64		dropped;
	AuditSlot	records[AUDIT_RING_SIZE];
} AuditRing;

static AuditRing *ring = NULL;

Size
audit_log_shmem_size(void)
{
	return sizeof(AuditRing);
}

void
audit_log_shmem_startup(void)
{
	bool		found;

	ring = ShmemInitStruct("pg_oauth audit", sizeof(AuditRing), &found);
	if (!found)
	{
		memset(ring, 0, sizeof(AuditRing));
		ring->lock = pg_oauth_lock(PG_OAUTH_LOCK_AUDIT);
	}
}

/*
 * Copy bytes a client sent (user and database names are any bytes) as valid
 * UTF-8 text: a byte that does not start a legal UTF-8 sequence, a control
 * character and a backslash are written as \xNN (a backslash as \\), so
 * nothing is dropped and no two names look alike.  Cut at a character
 * boundary when out is full.
 */
void
pg_oauth_escape_text(const char *in, char *out, size_t outlen)
{
	const unsigned char *p = (const unsigned char *) in;
	size_t		o = 0;

	while (*p != '\0')
	{
		char		esc[5];
		const char *piece = esc;
		int			plen = 4;
		int			len = 1;

		if (*p == '\\')
		{
			piece = "\\\\";
			plen = 2;
		}
		else if (*p < 0x20 || *p == 0x7f)
			snprintf(esc, sizeof(esc), "\\x%02x", *p);
		else if (*p < 0x80)
		{
			piece = (const char *) p;
			plen = 1;
		}
		else if ((len = pg_utf_mblen(p)) > 1 &&
				 strnlen((const char *) p, len) == (size_t) len &&
				 pg_utf8_islegal(p, len))
		{
			piece = (const char *) p;
			plen = len;
		}
		else
		{
			len = 1;
			snprintf(esc, sizeof(esc), "\\x%02x", *p);
		}
		if (o + plen >= outlen)
			break;
		memcpy(out + o, piece, plen);
		o += plen;
		p += len;
	}
	out[o] = '\0';
}

/*
 * strlcpy for text: cut at a character boundary, never inside one, so what a
 * fixed buffer keeps is still valid in its encoding (a kid of 62 ASCII bytes
 * and an "\u00e9" must not leave a lone 0xC3 in oauth.audit_log and the log).
 * Text from the validator is in the configuration database's encoding; in a
 * backend authenticating there is no database encoding yet (SQL_ASCII), so
 * UTF-8 is assumed then.  Bytes that are not UTF-8 count as one character
 * each: the cut can only come earlier, never split a valid sequence.
 */
size_t
pg_oauth_strlcpy_text(char *dst, const char *src, size_t size)
{
	int			encoding = GetDatabaseEncoding();
	size_t		srclen = strlen(src);
	int			keep;

	if (size == 0)
		return srclen;
	if (encoding == PG_SQL_ASCII)
		encoding = PG_UTF8;
	keep = srclen < size ? (int) srclen :
		pg_encoding_mbcliplen(encoding, src, (int) srclen, (int) (size - 1));
	memcpy(dst, src, keep);
	dst[keep] = '\0';
	return srclen;
}

/* key="value" with anything that could forge log structure replaced */
static void
append_quoted(StringInfo buf, const char *key, const char *value)
{
	const char *p;

	if (value == NULL || value[0] == '\0')
		return;
	appendStringInfo(buf, " %s=\"", key);
	for (p = value; *p; p++)
	{
		unsigned char c = (unsigned char) *p;

		if (c < 0x20 || c == 0x7f)
			appendStringInfoChar(buf, '?');
		else if (c == '"' || c == '\\')
		{
			appendStringInfoChar(buf, '\\');
			appendStringInfoChar(buf, (char) c);
		}
		else
			appendStringInfoChar(buf, (char) c);
	}
	appendStringInfoChar(buf, '"');
}

void
audit_log_record(const AuditRecord *rec)
{
	StringInfoData buf;
	AuditSlot  *slot;
	dsa_pointer identity;
	dsa_pointer dropped = InvalidDsaPointer;

	initStringInfo(&buf);
	appendStringInfo(&buf, "outcome=%s reason=%s", rec->ok ? "ok" : "refused", rec->reason);
	if (rec->per_transaction)
		appendStringInfoString(&buf, " kind=transaction");
	append_quoted(&buf, "role", rec->role);
	append_quoted(&buf, "database", rec->database);
	appendStringInfo(&buf, " client=%s ssl=%s",
					 rec->client_addr[0] ? rec->client_addr : "local",
					 rec->ssl ? "on" : "off");
	append_quoted(&buf, "issuer", rec->issuer);
	append_quoted(&buf, "subject", rec->subject);
	append_quoted(&buf, "token_id", rec->token_id);
	append_quoted(&buf, "kid", rec->kid);
	append_quoted(&buf, "alg", rec->alg);
	if (rec->cached)
		appendStringInfoString(&buf, " cache=hit");
	appendStringInfo(&buf, " elapsed_ms=%.3f", rec->elapsed_us / 1000.0);
	if (rec->queue_us >= 0)
		appendStringInfo(&buf, " queue_ms=%.3f", rec->queue_us / 1000.0);

	ereport(LOG,
			(errmsg_internal("pg_oauth audit: %s", buf.data),
			 errhidestmt(true), errhidecontext(true)));
	pfree(buf.data);

	/* A standby cannot write the table: the log line is its record. */
	if (ring == NULL || !pg_oauth_audit_log || RecoveryInProgress())
		return;

	/* stored before the lock is taken: it may have to map shared memory */
	identity = identity_text_store(rec->issuer, rec->subject, rec->token_id);
	LWLockAcquire(ring->lock, LW_EXCLUSIVE);
	if (ring->head - ring->tail >= AUDIT_RING_SIZE)
	{
		dropped = ring->records[ring->tail % AUDIT_RING_SIZE].identity;
		ring->tail++;
		ring->dropped++;
	}
	slot = &ring->records[ring->head % AUDIT_RING_SIZE];
	slot->rec = *rec;
	slot->rec.issuer = slot->rec.subject = slot->rec.token_id = NULL;
	slot->identity = identity;
	ring->head++;
	LWLockRelease(ring->lock);
	/* once out of the ring, a record's identity is ours alone */
	identity_text_free(dropped);
}

/*
 * Housekeeper: take up to max records, oldest first; their identities are
 * copied into the current memory context.
 */
int
audit_log_take(AuditRecord *out, int max)
{
	dsa_pointer *identities;
	int			n = 0;
	int			i;

	if (ring == NULL)
		return 0;
	identities = palloc(sizeof(dsa_pointer) * max);
	LWLockAcquire(ring->lock, LW_EXCLUSIVE);
	while (n < max && ring->tail < ring->head)
	{
		AuditSlot  *slot = &ring->records[ring->tail % AUDIT_RING_SIZE];

		out[n] = slot->rec;
		identities[n++] = slot->identity;
		ring->tail++;
	}
	LWLockRelease(ring->lock);
	for (i = 0; i < n; i++)
	{
		char	   *issuer,
				   *subject,
				   *token_id;

		identity_text_take(identities[i], &issuer, &subject, &token_id);
		out[i].issuer = issuer;
		out[i].subject = subject;
		out[i].token_id = token_id;
	}
	pfree(identities);
	return n;
}

uint64
audit_log_pending(void)
{
	uint64		n;

	if (ring == NULL)
		return 0;
	LWLockAcquire(ring->lock, LW_SHARED);
	n = ring->head - ring->tail;
	LWLockRelease(ring->lock);
	return n;
}

uint64
audit_log_dropped(void)
{
	uint64		d;

	if (ring == NULL)
		return 0;
	LWLockAcquire(ring->lock, LW_SHARED);
	d = ring->dropped;
	LWLockRelease(ring->lock);
	return d;
}
