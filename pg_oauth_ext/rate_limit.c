/*-------------------------------------------------------------------------
 *
 * rate_limit.c
 *	  Brute-force brake per client address.  It never refuses a login
 *	  before reading its token, so a token that validates is always
 *	  admitted; an address that keeps presenting bad tokens slows only
 *	  itself:
 *	  - from its second refusal within pg_oauth.rate_limit_window, each of
 *		its refusals is held back longer (25 ms, 50 ms, ... up to
 *		pg_oauth.rate_limit_max_delay), in the refused backend only;
 *	  - from its pg_oauth.rate_limit_failures-th refusal, its tokens are
 *		checked one at a time and after other addresses' (token_queue.c),
 *		so a flood from it occupies at most one validator worker.
 *	  oauth.rate_limits shows the braked addresses, oauth.rate_limit_reset()
 *	  lets them go.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"
#include "utils/wait_event.h"

PG_FUNCTION_INFO_V1(pg_oauth_fn_rate_limits);
PG_FUNCTION_INFO_V1(pg_oauth_fn_rate_limit_reset);
PG_FUNCTION_INFO_V1(pg_oauth_fn_rate_limit_reset_text);

#define RATE_LIMIT_ENTRIES	1024
#define RATE_LIMIT_PROBE	16
#define FIRST_DELAY_MS		25
#define LOCAL_KEY			"local"	/* all Unix-socket clients */

typedef struct AddressEntry
{
	char		addr[64];		/* "" free; LOCAL_KEY for Unix sockets */
	TimestampTz window_start;	/* first refusal of the current window */
	TimestampTz last_failure;
	int			failures;		/* within the window from window_start */
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

static const char *
key_of(const char *client_addr)
{
	return client_addr ? client_addr : LOCAL_KEY;
}

static bool
brake_on(void)
{
	return table != NULL && pg_oauth_rate_limit_failures > 0;
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
 * The entry of an address (spinlock held).  oauth.rate_limit_reset() leaves
 * holes, so the whole probe sequence is searched.  When it is full, the entry
 * with the oldest window is reused: an idle address forgets first.
 */
static AddressEntry *
lookup(const char *addr, bool create)
{
	uint32		start = addr_hash(addr) % RATE_LIMIT_ENTRIES;
	AddressEntry *free_entry = NULL;
	AddressEntry *oldest = NULL;
	AddressEntry *e;
	int			i;

	for (i = 0; i < RATE_LIMIT_PROBE; i++)
	{
		e = &table->entries[(start + i) % RATE_LIMIT_ENTRIES];
		if (e->addr[0] == '\0')
		{
			if (free_entry == NULL)
				free_entry = e;
			continue;
		}
		if (strcmp(e->addr, addr) == 0)
			return e;
		if (oldest == NULL || e->window_start < oldest->window_start)
			oldest = e;
	}
	if (!create)
		return NULL;
	e = free_entry ? free_entry : oldest;
	memset(e, 0, sizeof(*e));
	pg_oauth_strlcpy_text(e->addr, addr, sizeof(e->addr));
	return e;
}

static TimestampTz
window_end(const AddressEntry *e)
{
	return TimestampTzPlusMilliseconds(e->window_start,
									   (int64) pg_oauth_rate_limit_window * 1000);
}

/* Refusals counted now: none once the window has ended. */
static int
failures_now(const AddressEntry *e, TimestampTz now)
{
	if (e->addr[0] == '\0' || now >= window_end(e))
		return 0;
	return e->failures;
}

/* How long the n-th refusal of a window is held back: 0, 25 ms, 50 ms, ... */
static int
delay_for(int n)
{
	if (n < 2)
		return 0;
	if (n - 2 >= 20)
		return pg_oauth_rate_limit_max_delay;
	return Min(pg_oauth_rate_limit_max_delay, FIRST_DELAY_MS << (n - 2));
}

static bool
one_at_a_time(int failures)
{
	return failures >= pg_oauth_rate_limit_failures;
}

/*
 * Count a refusal of this address (NULL: Unix socket); returns how long to
 * hold the refusal back (ms).
 */
int
rate_limit_record_failure(const char *client_addr)
{
	AddressEntry *e;
	TimestampTz now = GetCurrentTimestamp();
	int			n;

	if (!brake_on())
		return 0;
	SpinLockAcquire(&table->mutex);
	e = lookup(key_of(client_addr), true);
	if (failures_now(e, now) == 0)
	{
		e->window_start = now;
		e->failures = 0;
	}
	n = ++e->failures;
	e->last_failure = now;
	SpinLockRelease(&table->mutex);
	return delay_for(n);
}

/*
 * Are this address's tokens to be checked one at a time, after other
 * addresses'?  token_queue.c asks before it hands a token to the workers.
 */
bool
rate_limit_one_at_a_time(const char *client_addr)
{
	AddressEntry *e;
	bool		result = false;

	if (!brake_on())
		return false;
	SpinLockAcquire(&table->mutex);
	e = lookup(key_of(client_addr), false);
	if (e && one_at_a_time(failures_now(e, GetCurrentTimestamp())))
		result = true;
	SpinLockRelease(&table->mutex);
	return result;
}

/*
 * The HINT sentence for a refusal of this address, held back delay_ms:
 * how long the brake lasts, so the client knows how long it would wait.
 * NULL when the address is not braked.
 */
char *
rate_limit_hint(const char *client_addr, int delay_ms)
{
	AddressEntry *e;
	AddressEntry copy;
	TimestampTz now = GetCurrentTimestamp();
	long		secs;
	int			usecs;
	bool		one;

	if (!brake_on())
		return NULL;
	memset(&copy, 0, sizeof(copy));
	SpinLockAcquire(&table->mutex);
	e = lookup(key_of(client_addr), false);
	if (e)
		copy = *e;
	SpinLockRelease(&table->mutex);

	one = one_at_a_time(failures_now(&copy, now));
	if (delay_ms <= 0 && !one)
		return NULL;
	TimestampDifference(now, window_end(&copy), &secs, &usecs);
	if (usecs > 0)
		secs++;
	if (delay_ms > 0)
		return psprintf("Refused logins from this address are held back (this one by %d ms)%s "
						"until its count of refusals starts over in %ld s; a valid token is not held back.",
						delay_ms, one ? ", and its tokens are checked one at a time," : "",
						secs);
	return psprintf("Tokens from this address are checked one at a time, after other addresses', "
					"until its count of refusals starts over in %ld s.", secs);
}

/*
 * Has the client hung up?  Waiting for our answer it sends nothing, so a
 * readable socket means it closed (or broke the protocol): a backend held
 * back for it would only take a connection slot.
 */
bool
rate_limit_client_left(void)
{
	if (MyProcPort == NULL || MyProcPort->sock == PGINVALID_SOCKET)
		return false;
	return (WaitLatchOrSocket(NULL, WL_SOCKET_READABLE | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							  MyProcPort->sock, 0, PG_WAIT_EXTENSION) & WL_SOCKET_READABLE) != 0;
}

/*
 * Hold this backend back for ms, interruptibly; nobody else waits.  A client
 * that hangs up meanwhile is not waited for: the backend ends at once,
 * quietly (its refusal is already in the audit log).
 */
void
rate_limit_sleep(int ms)
{
	TimestampTz until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms);
	pgsocket	sock = MyProcPort ? MyProcPort->sock : PGINVALID_SOCKET;

	while (ms > 0)
	{
		long		secs;
		int			usecs;
		int			rc;

		rc = WaitLatchOrSocket(MyLatch,
							   WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH |
							   (sock != PGINVALID_SOCKET ? WL_SOCKET_READABLE : 0),
							   sock, ms, PG_WAIT_EXTENSION);
		if (rc & WL_SOCKET_READABLE)
			proc_exit(0);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		TimestampDifference(GetCurrentTimestamp(), until, &secs, &usecs);
		ms = (int) (secs * 1000 + usecs / 1000);
	}
}

/* oauth.rate_limits: every address whose refusals are being counted now. */
Datum
pg_oauth_fn_rate_limits(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TimestampTz now = GetCurrentTimestamp();
	int			i;

	InitMaterializedSRF(fcinfo, 0);
	if (table == NULL)
		return (Datum) 0;

	for (i = 0; i < RATE_LIMIT_ENTRIES; i++)
	{
		AddressEntry e;
		Datum		values[7];
		bool		nulls[7];
		int			failures;
		bool		on = brake_on();

		SpinLockAcquire(&table->mutex);
		e = table->entries[i];
		SpinLockRelease(&table->mutex);
		failures = failures_now(&e, now);
		if (failures == 0)
			continue;

		memset(nulls, false, sizeof(nulls));
		values[0] = CStringGetTextDatum(e.addr);
		values[1] = Int32GetDatum(failures);
		/* what the next refusal would be held back */
		values[2] = Int32GetDatum(on ? delay_for(failures + 1) : 0);
		values[3] = BoolGetDatum(on && one_at_a_time(failures));
		values[4] = TimestampTzGetDatum(e.window_start);
		values[5] = TimestampTzGetDatum(window_end(&e));
		values[6] = TimestampTzGetDatum(e.last_failure);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * Forget the addresses within network (NULL: all; only_local: the Unix-socket
 * entry).  Returns how many of them were being braked.
 */
static int
reset_addresses(Datum network, bool all, bool only_local)
{
	TimestampTz now = GetCurrentTimestamp();
	char	  (*keys)[64];
	int			nkeys = 0;
	int			cleared = 0;
	int			i;

	if (table == NULL)
		return 0;

	/* Which entries lie within the network: inet_in needs no spinlock held. */
	keys = palloc(sizeof(*keys) * RATE_LIMIT_ENTRIES);
	SpinLockAcquire(&table->mutex);
	for (i = 0; i < RATE_LIMIT_ENTRIES; i++)
	{
		const char *addr = table->entries[i].addr;

		if (addr[0] != '\0' &&
			(all || (only_local == (strcmp(addr, LOCAL_KEY) == 0))))
			pg_oauth_strlcpy_text(keys[nkeys++], addr, sizeof(keys[0]));
	}
	SpinLockRelease(&table->mutex);
	if (!all && !only_local)
	{
		int			kept = 0;

		for (i = 0; i < nkeys; i++)
		{
			Datum		addr = DirectFunctionCall1(inet_in, CStringGetDatum(keys[i]));

			if (DatumGetBool(DirectFunctionCall2(network_subeq, addr, network)))
				memmove(keys[kept++], keys[i], sizeof(keys[0]));
		}
		nkeys = kept;
	}

	SpinLockAcquire(&table->mutex);
	for (i = 0; i < nkeys; i++)
	{
		AddressEntry *e = lookup(keys[i], false);

		if (e == NULL)
			continue;
		if (failures_now(e, now) > 0)
			cleared++;
		memset(e, 0, sizeof(*e));
	}
	SpinLockRelease(&table->mutex);
	pfree(keys);
	return cleared;
}

/* oauth.rate_limit_reset(address inet DEFAULT NULL): an address, a network, or all. */
Datum
pg_oauth_fn_rate_limit_reset(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		PG_RETURN_INT32(reset_addresses((Datum) 0, true, false));
	PG_RETURN_INT32(reset_addresses(PG_GETARG_DATUM(0), false, false));
}

/* oauth.rate_limit_reset(address text): the same, and 'local' for Unix sockets. */
Datum
pg_oauth_fn_rate_limit_reset_text(PG_FUNCTION_ARGS)
{
	char	   *address;

	if (PG_ARGISNULL(0))
		PG_RETURN_INT32(reset_addresses((Datum) 0, true, false));
	address = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (strcmp(address, LOCAL_KEY) == 0)
		PG_RETURN_INT32(reset_addresses((Datum) 0, false, true));
	PG_RETURN_INT32(reset_addresses(DirectFunctionCall1(inet_in, CStringGetDatum(address)),
									false, false));
}
