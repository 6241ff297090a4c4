/*-------------------------------------------------------------------------
 *
 * audit_log.c
 *	  One structured log line per login attempt, and the same record handed
 *	  to the housekeeper through a shared-memory ring for oauth.audit_log.
 *
 * A login never waits on the table: it copies its record into the ring and
 * goes on.  When the ring is full the oldest record is overwritten and
 * counted as dropped (the log line still exists).
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

typedef struct AuditRing
{
	LWLock	   *lock;
	uint64		head;			/* next record written */
	uint64		tail;			/* next record taken */
	uint64		dropped;
	AuditRecord records[AUDIT_RING_SIZE];
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
		ring->lock = &(GetNamedLWLockTranche("pg_oauth"))[2].lock;
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
 * strlcpy for text that is already valid UTF-8 (identities from the
 * validator): when cut, cut before a partial character, never inside one.
 */
void
pg_oauth_clip_utf8(const char *in, char *out, size_t outlen)
{
	size_t		n = strlcpy(out, in, outlen);
	size_t		end,
				start;

	if (n < outlen)
		return;
	end = outlen - 1;
	start = end;
	while (start > 0 && (((unsigned char) out[start - 1]) & 0xC0) == 0x80)
		start--;
	if (start > 0 && ((unsigned char) out[start - 1]) >= 0xC0)
	{
		start--;
		if (start + pg_utf_mblen((const unsigned char *) out + start) > end)
			out[start] = '\0';
	}
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

	initStringInfo(&buf);
	appendStringInfo(&buf, "outcome=%s reason=%s", rec->ok ? "ok" : "refused", rec->reason);
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

	LWLockAcquire(ring->lock, LW_EXCLUSIVE);
	if (ring->head - ring->tail >= AUDIT_RING_SIZE)
	{
		ring->tail++;
		ring->dropped++;
	}
	ring->records[ring->head % AUDIT_RING_SIZE] = *rec;
	ring->head++;
	LWLockRelease(ring->lock);
}

/* Housekeeper: take up to max records, oldest first. */
int
audit_log_take(AuditRecord *out, int max)
{
	int			n = 0;

	if (ring == NULL)
		return 0;
	LWLockAcquire(ring->lock, LW_EXCLUSIVE);
	while (n < max && ring->tail < ring->head)
	{
		out[n++] = ring->records[ring->tail % AUDIT_RING_SIZE];
		ring->tail++;
	}
	LWLockRelease(ring->lock);
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
