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
