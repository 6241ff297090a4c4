/*-------------------------------------------------------------------------
 *
 * rate_limit.c
 *	  Brute-force brake per client address: refusals within a window make
 *	  the next refusals of that address slower, then block the address
 *	  (rate_limited) before a token is even requested, so an attacker can
 *	  neither fill the validator workers nor slow other clients.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include "miscadmin.h"
#include "storage/latch.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#define RATE_LIMIT_ENTRIES	1024
#define FIRST_DELAY_MS		25

typedef struct AddressEntry
{
	char		addr[64];		/* "" free; "local" for Unix sockets */
	TimestampTz window_start;
	int			failures;
	TimestampTz blocked_at;		/* 0: not blocked; a block lasts one (current) window */
} AddressEntry;

typedef struct RateLimitTable
{
	slock_t		mutex;
	AddressEntry entries[RATE_LIMIT_ENTRIES];
} RateLimitTable;

static RateLimitTable *table = NULL;

Size
rate_limit_shmem_size(void)
{
	return sizeof(RateLimitTable);
}

void
rate_limit_shmem_startup(void)
{
	bool		found;

	table = ShmemInitStruct("pg_oauth rate limit", sizeof(RateLimitTable), &found);
	if (!found)
	{
		memset(table, 0, sizeof(RateLimitTable));
		SpinLockInit(&table->mutex);
	}
}

static uint32
addr_hash(const char *addr)
{
	uint32		h = 2166136261u;

	for (; *addr; addr++)
		h = (h ^ (unsigned char) *addr) * 16777619u;
	return h;
}

/*
 * The entry of an address (spinlock held).  When the probe sequence is full,
 * the entry with the oldest window is reused: an idle address forgets first.
 */
static AddressEntry *
lookup(const char *addr, bool create)
{
	uint32		start = addr_hash(addr) % RATE_LIMIT_ENTRIES;
	AddressEntry *oldest = NULL;
	int			i;

	for (i = 0; i < 16; i++)
	{
		AddressEntry *e = &table->entries[(start + i) % RATE_LIMIT_ENTRIES];

		if (strcmp(e->addr, addr) == 0)
			return e;
		if (e->addr[0] == '\0')
		{
			if (!create)
				return NULL;
			oldest = e;
			break;
		}
		if (oldest == NULL || e->window_start < oldest->window_start)
			oldest = e;
	}
	if (!create)
		return NULL;
	memset(oldest, 0, sizeof(*oldest));
	strlcpy(oldest->addr, addr, sizeof(oldest->addr));
	return oldest;
}

/* Is this address blocked right now? */
bool
rate_limit_blocked(const char *addr)
{
	AddressEntry *e;
	bool		blocked = false;

	if (table == NULL || pg_oauth_rate_limit_failures <= 0)
		return false;
	SpinLockAcquire(&table->mutex);
	e = lookup(addr, false);
	if (e && e->blocked_at != 0 &&
		GetCurrentTimestamp() < TimestampTzPlusMilliseconds(e->blocked_at,
															(int64) pg_oauth_rate_limit_window * 1000))
		blocked = true;
	SpinLockRelease(&table->mutex);
	return blocked;
}

/*
 * Count a refusal of this address; returns how long to hold the refusal back
 * (ms).  The failures-th refusal within the window blocks the address for
 * one window.
 */
int
rate_limit_record_failure(const char *addr)
{
	AddressEntry *e;
	TimestampTz now = GetCurrentTimestamp();
	int			delay = 0;
	int			n;

	if (table == NULL || pg_oauth_rate_limit_failures <= 0)
		return 0;
	SpinLockAcquire(&table->mutex);
	e = lookup(addr, true);
	if (now >= TimestampTzPlusMilliseconds(e->window_start,
										   (int64) pg_oauth_rate_limit_window * 1000))
	{
		e->window_start = now;
		e->failures = 0;
	}
	n = ++e->failures;
	if (n >= pg_oauth_rate_limit_failures)
		e->blocked_at = now;
	SpinLockRelease(&table->mutex);

	/* no delay for the first refusal; then 25 ms, 50 ms, ... up to the cap */
	if (n >= 2)
		delay = (n - 2 >= 20) ? pg_oauth_rate_limit_max_delay :
			Min(pg_oauth_rate_limit_max_delay, FIRST_DELAY_MS << (n - 2));
	return delay;
}

/* Hold this backend back for ms, interruptibly; nobody else waits. */
void
rate_limit_sleep(int ms)
{
	TimestampTz until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms);

	while (ms > 0)
	{
		long		secs;
		int			usecs;

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		TimestampDifference(GetCurrentTimestamp(), until, &secs, &usecs);
		ms = (int) (secs * 1000 + usecs / 1000);
	}
}
