/*-------------------------------------------------------------------------
 *
 * token_queue.c
 *	  Shared-memory hand-off of tokens from authenticating backends to the
 *	  validator workers, and of decisions back.
 *
 * A slot belongs to whoever its state says: the backend while FILLING and
 * DONE, a worker while WORKING.  The queue lock is held only to change states
 * and worker bookkeeping, never while copying tokens or waiting.  Any idle
 * worker takes a pending slot, so one slow validation never blocks the
 * others.  Which one is fair between client addresses: one that floods the
 * queue gets its share of the workers, not all of them, and an address the
 * brute-force brake is holding (rate_limit.c) has at most one request in the
 * queue at a time and goes after everyone else.
 *
 * The queue also keeps each worker's state under its lock; oauth.workers()
 * reports it.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include "common/hashfn.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

PG_FUNCTION_INFO_V1(pg_oauth_fn_workers);

PgOAuthShared *pg_oauth_shared = NULL;

/* The slot this backend is using, for the exit callback. */
static int	my_slot = -1;
static uint64 my_ticket = 0;
static bool backend_exit_registered = false;

int
token_queue_nslots(void)
{
	/* Enough for bursts; more waiters sleep on slot_freed within their deadline. */
	return Min(PG_OAUTH_MAX_SLOTS, Max(16, 4 * pg_oauth_workers));
}

Size
token_queue_shmem_size(void)
{
	return add_size(offsetof(PgOAuthShared, slots),
					mul_size(token_queue_nslots(), sizeof(TokenSlot)));
}


void
token_queue_shmem_startup(void)
{
	bool		found;
	int			i;

	pg_oauth_shared = ShmemInitStruct("pg_oauth", token_queue_shmem_size(), &found);
	if (!found)
	{
		memset(pg_oauth_shared, 0, token_queue_shmem_size());
		pg_oauth_shared->lock = pg_oauth_lock(PG_OAUTH_LOCK_QUEUE);
		ConditionVariableInit(&pg_oauth_shared->slot_freed);
		pg_atomic_init_u64(&pg_oauth_shared->config_version, 1);
		pg_atomic_init_u64(&pg_oauth_shared->config_structure, 0);
		pg_atomic_init_u64(&pg_oauth_shared->followed_version, 0);
		pg_atomic_init_u64(&pg_oauth_shared->followed_at, 0);
		pg_oauth_shared->next_ticket = 1;
		pg_oauth_shared->refresher = -1;
		pg_oauth_shared->nworkers = pg_oauth_workers;
		pg_oauth_shared->nslots = token_queue_nslots();
		/* Workers are about to start: logins wait for them rather than fail. */
		for (i = 0; i < pg_oauth_workers; i++)
			pg_oauth_shared->workers[i].state = WORKER_STARTING;
	}
}

static void
set_failure(TokenSlot *slot, const char *reason, const char *detail)
{
	slot->ok = false;
	pg_oauth_strlcpy_text(slot->reason, reason, sizeof(slot->reason));
	pg_oauth_strlcpy_text(slot->detail, detail, sizeof(slot->detail));
	slot->off_issuer = slot->off_subject = slot->off_token_id = -1;
	slot->off_claims = slot->off_roles = -1;
	slot->n_roles = 0;
	slot->has_expires_at = false;
	slot->kid[0] = slot->alg[0] = '\0';
	slot->key_cache_hit = -1;
	slot->max_sessions = -1;
}

static void
decision_fail(TokenDecision *out, const char *reason, const char *detail)
{
	memset(out, 0, sizeof(*out));
	out->ok = false;
	pg_oauth_strlcpy_text(out->reason, reason, sizeof(out->reason));
	pg_oauth_strlcpy_text(out->detail, detail, sizeof(out->detail));
	out->key_cache_hit = -1;
	out->max_sessions = -1;
	out->validation_us = -1;
	out->queue_us = -1;
}

/* Free a slot the caller owns (lock held); wipes whatever token bytes remain. */
static void
slot_release_locked(TokenSlot *slot)
{
	explicit_bzero(slot->data, Max(slot->token_len, 0) + 1);
	slot->state = SLOT_FREE;
	slot->backend = NULL;
	slot->worker = -1;
	slot->token_len = 0;
}

static void
backend_exit_callback(int code, Datum arg)
{
	TokenSlot  *slot;

	if (my_slot < 0 || pg_oauth_shared == NULL)
		return;

	slot = &pg_oauth_shared->slots[my_slot];
	LWLockAcquire(pg_oauth_shared->lock, LW_EXCLUSIVE);
	if (slot->ticket == my_ticket)
	{
		if (slot->state == SLOT_WORKING)
			slot->state = SLOT_ABANDONED;	/* the worker frees it */
		else if (slot->state != SLOT_FREE && slot->state != SLOT_ABANDONED)
			slot_release_locked(slot);
	}
	LWLockRelease(pg_oauth_shared->lock);
	my_slot = -1;
	ConditionVariableBroadcast(&pg_oauth_shared->slot_freed);
}

static long
ms_until(TimestampTz deadline)
{
	long		secs;
	int			usecs;

	if (GetCurrentTimestamp() >= deadline)
		return 0;
	TimestampDifference(GetCurrentTimestamp(), deadline, &secs, &usecs);
	return secs * 1000 + usecs / 1000 + 1;
}

/*
 * Count workers that can take a request now, and ones that soon may.
 * Lock held.
 */
static void
count_workers_locked(int *ready, int *starting, const char **why)
{
	int			i;

	*ready = *starting = 0;
	*why = NULL;
	for (i = 0; i < pg_oauth_shared->nworkers; i++)
	{
		WorkerInfo *w = &pg_oauth_shared->workers[i];

		if (w->state == WORKER_IDLE || w->state == WORKER_BUSY)
			(*ready)++;
		else if (w->state == WORKER_STARTING)
			(*starting)++;
		if (w->last_error[0] != '\0' && *why == NULL)
			*why = w->last_error;
	}
}

/* Pick an idle worker nobody has woken yet (lock held); NULL if none. */
static PGPROC *
pick_idle_worker_locked(void)
{
	int			i;

	for (i = 0; i < pg_oauth_shared->nworkers; i++)
	{
		WorkerInfo *w = &pg_oauth_shared->workers[i];

		if (w->state == WORKER_IDLE && !w->wakeup_pending && w->proc != NULL)
		{
			w->wakeup_pending = true;
			return w->proc;
		}
	}
	return NULL;
}

/* Is a request from this address anywhere in the queue?  Lock held. */
static bool
address_queued_locked(const char *addr, uint32 hash)
{
	int			i;

	for (i = 0; i < pg_oauth_shared->nslots; i++)
	{
		TokenSlot  *s = &pg_oauth_shared->slots[i];

		if (s->state != SLOT_FREE && s->addr_hash == hash &&
			strcmp(s->client_addr, addr) == 0)
			return true;
	}
	return false;
}

/* Copy the worker's answer out of the slot into the caller's memory. */
static void
copy_decision(TokenSlot *slot, TokenDecision *out)
{
	int			i;
	const char *p;

	memset(out, 0, sizeof(*out));
	out->ok = slot->ok;
	pg_oauth_strlcpy_text(out->reason, slot->reason, sizeof(out->reason));
	pg_oauth_strlcpy_text(out->detail, slot->detail, sizeof(out->detail));
	out->issuer = slot->off_issuer >= 0 ? pstrdup(slot->data + slot->off_issuer) : NULL;
	out->subject = slot->off_subject >= 0 ? pstrdup(slot->data + slot->off_subject) : NULL;
	out->token_id = slot->off_token_id >= 0 ? pstrdup(slot->data + slot->off_token_id) : NULL;
	out->claims = slot->off_claims >= 0 ? pstrdup(slot->data + slot->off_claims) : NULL;
	out->has_expires_at = slot->has_expires_at;
	out->expires_at = slot->expires_at;
	pg_oauth_strlcpy_text(out->kid, slot->kid, sizeof(out->kid));
	pg_oauth_strlcpy_text(out->alg, slot->alg, sizeof(out->alg));
	out->key_cache_hit = slot->key_cache_hit;
	out->max_sessions = slot->max_sessions;
	out->validation_us = slot->validation_us;
	out->queue_us = -1;
	out->allowed_roles = NIL;
	if (slot->off_roles >= 0)
	{
		p = slot->data + slot->off_roles;
		for (i = 0; i < slot->n_roles; i++)
		{
			out->allowed_roles = lappend(out->allowed_roles, pstrdup(p));
			p += strlen(p) + 1;
		}
	}
}

/*
 * Hand a token to the validator workers and wait for the decision, at most
 * pg_oauth.timeout.  Never throws for validator trouble: every failure comes
 * back as a refusal with a reason code.  Interrupts (authentication_timeout,
 * termination) are honoured while waiting.
 */
void
token_queue_validate(const TokenRequest *req, TokenDecision *out)
{
	TimestampTz deadline;
	TimestampTz submitted;
	TokenSlot  *slot = NULL;
	PGPROC	   *wake = NULL;
	int			ready,
				starting;
	const char *why;
	const char *addr = req->client_addr ? req->client_addr : "";
	uint32		hash = hash_bytes((const unsigned char *) addr, strlen(addr));
	bool		braked = false;
	bool		waiting_turn = false;
	int			i;

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), pg_oauth_timeout_ms);

	if (pg_oauth_shared == NULL || pg_oauth_shared->nworkers == 0)
	{
		decision_fail(out, "validator_unavailable",
					  "no validator workers are configured (pg_oauth.workers = 0)");
		return;
	}

	if (!backend_exit_registered)
	{
		before_shmem_exit(backend_exit_callback, (Datum) 0);
		backend_exit_registered = true;
	}

	/*
	 * Take a free slot, unless no worker can ever answer.  A braked address
	 * waits until its previous request has left the queue: it holds at most
	 * one slot, and so at most one worker.
	 */
	for (;;)
	{
		braked = rate_limit_one_at_a_time(req->client_addr);
		/* a braked flood that hangs up gets no worker and piles up no backends */
		if (braked && rate_limit_client_left())
		{
			ConditionVariableCancelSleep();
			proc_exit(0);
		}
		LWLockAcquire(pg_oauth_shared->lock, LW_EXCLUSIVE);
		count_workers_locked(&ready, &starting, &why);
		if (ready == 0 && starting == 0)
		{
			char	   *detail;

			/* palloc under the lock is fine: an error would release it */
			detail = psprintf("no validator worker is ready%s%s",
							  why ? ": " : "", why ? why : "");
			LWLockRelease(pg_oauth_shared->lock);
			decision_fail(out, "validator_unavailable", detail);
			pg_oauth_wake_all_workers();	/* let not-ready workers retry */
			return;
		}
		waiting_turn = braked && address_queued_locked(addr, hash);
		for (i = 0; i < pg_oauth_shared->nslots && !waiting_turn; i++)
		{
			if (pg_oauth_shared->slots[i].state == SLOT_FREE)
			{
				slot = &pg_oauth_shared->slots[i];
				slot->state = SLOT_FILLING;
				slot->ticket = pg_oauth_shared->next_ticket++;
				slot->backend = MyProc;
				slot->worker = -1;
				pg_oauth_strlcpy_text(slot->client_addr, addr, sizeof(slot->client_addr));
				slot->addr_hash = hash;
				slot->one_at_a_time = braked;
				my_slot = i;
				my_ticket = slot->ticket;
				break;
			}
		}
		LWLockRelease(pg_oauth_shared->lock);
		if (slot != NULL)
			break;

		/* Our address's turn or a free slot: wait for it within our deadline. */
		if (ms_until(deadline) <= 0)
		{
			ConditionVariableCancelSleep();
			if (waiting_turn)
				decision_fail(out, "rate_limited",
							  "this address had too many refused token logins within "
							  "pg_oauth.rate_limit_window, so its tokens are checked one at a time; "
							  "this one's turn did not come before pg_oauth.timeout");
			else
				decision_fail(out, "validator_timeout",
							  "no free validation slot before pg_oauth.timeout");
			return;
		}
		ConditionVariableTimedSleep(&pg_oauth_shared->slot_freed,
									Min(ms_until(deadline), 100),
									PG_WAIT_EXTENSION);
		CHECK_FOR_INTERRUPTS();
	}
	ConditionVariableCancelSleep();

	/* We own the slot: copy the request in without the lock. */
	pg_oauth_strlcpy_text(slot->role, req->role, sizeof(slot->role));
	pg_oauth_strlcpy_text(slot->database, req->database, sizeof(slot->database));
	slot->ssl = req->ssl;
	slot->token_len = req->token_len;
	memcpy(slot->data, req->token, req->token_len);
	slot->data[req->token_len] = '\0';

	submitted = GetCurrentTimestamp();
	LWLockAcquire(pg_oauth_shared->lock, LW_EXCLUSIVE);
	slot->state = SLOT_PENDING;
	wake = pick_idle_worker_locked();
	LWLockRelease(pg_oauth_shared->lock);
	if (wake)
		SetLatch(&wake->procLatch);
	TRACE_BACKEND(TRACE_B_SUBMITTED);

	/* Wait for the decision. */
	for (;;)
	{
		long		remaining;

		LWLockAcquire(pg_oauth_shared->lock, LW_EXCLUSIVE);
		if (slot->state == SLOT_DONE)
		{
			LWLockRelease(pg_oauth_shared->lock);
			break;
		}
		remaining = ms_until(deadline);
		if (remaining <= 0)
		{
			bool		working = (slot->state == SLOT_WORKING);

			if (working)
				slot->state = SLOT_ABANDONED;
			else
				slot_release_locked(slot);
			my_slot = -1;
			LWLockRelease(pg_oauth_shared->lock);
			ConditionVariableBroadcast(&pg_oauth_shared->slot_freed);
			decision_fail(out, "validator_timeout",
						  working ?
						  "the validator did not answer within pg_oauth.timeout" :
						  "no validator worker was free within pg_oauth.timeout");
			return;
		}
		LWLockRelease(pg_oauth_shared->lock);

		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 remaining, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}

	TRACE_BACKEND(TRACE_B_ANSWERED);
#ifdef PG_OAUTH_TRACE
	memcpy(pg_oauth_trace_worker, slot->trace, sizeof(pg_oauth_trace_worker));
#endif
	copy_decision(slot, out);
	if (out->validation_us >= 0)
		out->queue_us = Max(0, (int64) (GetCurrentTimestamp() - submitted) - out->validation_us);

	LWLockAcquire(pg_oauth_shared->lock, LW_EXCLUSIVE);
	slot_release_locked(slot);
	my_slot = -1;
	LWLockRelease(pg_oauth_shared->lock);
	ConditionVariableBroadcast(&pg_oauth_shared->slot_freed);
}

/* ---------------------------------------------------------------------
 * Worker side
 * ---------------------------------------------------------------------
 */

/* How many requests from the address of slot s the workers hold now. */
static int
address_load(const TokenSlot *s, TokenSlot *const *working, int nworking)
{
	int			load = 0;
	int			i;

	for (i = 0; i < nworking; i++)
	{
		if (working[i]->addr_hash == s->addr_hash &&
			strcmp(working[i]->client_addr, s->client_addr) == 0)
			load++;
	}
	return load;
}

/*
 * Which of two pending requests a free worker takes first: other addresses
 * before braked ones, then the address with fewer requests in the workers,
 * then the older request.
 */
static bool
goes_first(const TokenSlot *a, int a_load, const TokenSlot *b, int b_load)
{
	if (a->one_at_a_time != b->one_at_a_time)
		return !a->one_at_a_time;
	if (a_load != b_load)
		return a_load < b_load;
	return a->ticket < b->ticket;
}

/*
 * Take the pending request that goes first, or mark ourselves idle if there
 * is none.  Both happen under the lock, so a backend that posts a request
 * either sees us idle (and wakes us) or we see its request.
 */
TokenSlot *
token_queue_claim(int worker, uint64 *ticket)
{
	WorkerInfo *w = &pg_oauth_shared->workers[worker];
	TokenSlot  *best = NULL;
	int			best_load = 0;
	TokenSlot  *working[PG_OAUTH_MAX_SLOTS];
	int			nworking = 0;
	int			i;

	LWLockAcquire(pg_oauth_shared->lock, LW_EXCLUSIVE);
	w->wakeup_pending = false;
	/* an abandoned request is still in a worker until it finishes */
	for (i = 0; i < pg_oauth_shared->nslots; i++)
	{
		TokenSlot  *s = &pg_oauth_shared->slots[i];

		if (s->state == SLOT_WORKING || s->state == SLOT_ABANDONED)
			working[nworking++] = s;
	}
	for (i = 0; i < pg_oauth_shared->nslots; i++)
	{
		TokenSlot  *s = &pg_oauth_shared->slots[i];
		int			load;

		if (s->state != SLOT_PENDING)
			continue;
		load = nworking > 0 ? address_load(s, working, nworking) : 0;
		if (best == NULL || goes_first(s, load, best, best_load))
		{
			best = s;
			best_load = load;
		}
	}
	if (best)
	{
		best->state = SLOT_WORKING;
		best->worker = worker;
		best->validation_us = -1;
		TRACE_SLOT(best, TRACE_W_CLAIMED);
		*ticket = best->ticket;
		w->state = WORKER_BUSY;
		w->requests++;
	}
	else
		w->state = WORKER_IDLE;
	LWLockRelease(pg_oauth_shared->lock);
	return best;
}

/* Hand the decision written into the slot back to its backend. */
void
token_queue_complete(TokenSlot *slot, uint64 ticket)
{
	PGPROC	   *backend = NULL;

	LWLockAcquire(pg_oauth_shared->lock, LW_EXCLUSIVE);
	if (slot->ticket == ticket)
	{
		if (slot->state == SLOT_ABANDONED)
			slot_release_locked(slot);
		else if (slot->state == SLOT_WORKING)
		{
			slot->state = SLOT_DONE;
			backend = slot->backend;
			TRACE_SLOT(slot, TRACE_W_HANDED);
		}
	}
	LWLockRelease(pg_oauth_shared->lock);
	if (backend)
		SetLatch(&backend->procLatch);
	else
		ConditionVariableBroadcast(&pg_oauth_shared->slot_freed);
}

void
token_queue_fail(TokenSlot *slot, const char *reason, const char *detail)
{
	set_failure(slot, reason, detail);
}

/*
 * When no worker is ready or on its way, pending requests cannot be answered:
 * fail them now rather than let them run into the timeout.  Lock held;
 * returns the new count of backends to wake.
 */
static int
fail_pending_if_no_workers_locked(PGPROC **wake, int nwake)
{
	int			ready,
				starting;
	const char *why;
	int			i;

	count_workers_locked(&ready, &starting, &why);
	if (ready + starting > 0)
		return nwake;
	for (i = 0; i < pg_oauth_shared->nslots; i++)
	{
		TokenSlot  *s = &pg_oauth_shared->slots[i];

		if (s->state == SLOT_PENDING)
		{
			set_failure(s, "validator_unavailable", "no validator worker is ready");
			s->state = SLOT_DONE;
			wake[nwake++] = s->backend;
		}
	}
	return nwake;
}

/*
 * A worker changes state (lock not held).  A worker that is not ready records
 * why, so that refused logins can say it.
 */
void
token_queue_set_worker_state(int worker, WorkerState state, const char *error)
{
	WorkerInfo *w = &pg_oauth_shared->workers[worker];
	PGPROC	   *wake[PG_OAUTH_MAX_SLOTS];
	int			nwake = 0;
	int			i;

	LWLockAcquire(pg_oauth_shared->lock, LW_EXCLUSIVE);
	/* what cached decisions were checked against may be gone (extension dropped) */
	if (state == WORKER_NOT_READY && w->state != WORKER_NOT_READY)
		decision_cache_keys_changed();
	w->state = state;
	if (state == WORKER_STARTING)
	{
		w->pid = MyProcPid;
		w->proc = MyProc;
	}
	if (error)
		pg_oauth_strlcpy_text(w->last_error, error, sizeof(w->last_error));
	else if (state == WORKER_IDLE)
		w->last_error[0] = '\0';
	if (state == WORKER_NOT_READY)
		nwake = fail_pending_if_no_workers_locked(wake, nwake);
	LWLockRelease(pg_oauth_shared->lock);
	for (i = 0; i < nwake; i++)
		SetLatch(&wake[i]->procLatch);
}

/*
 * Key refreshes may wait on a slow issuer: only one worker at a time does
 * one, so the others stay free for logins.  The caller is marked busy so
 * that no backend wakes it meanwhile.  False: someone else is refreshing.
 */
bool
token_queue_start_refresh(int worker)
{
	bool		mine = false;

	LWLockAcquire(pg_oauth_shared->lock, LW_EXCLUSIVE);
	if (pg_oauth_shared->refresher < 0 || pg_oauth_shared->refresher == worker)
	{
		pg_oauth_shared->refresher = worker;
		pg_oauth_shared->workers[worker].state = WORKER_BUSY;
		mine = true;
	}
	LWLockRelease(pg_oauth_shared->lock);
	return mine;
}

void
token_queue_end_refresh(int worker)
{
	LWLockAcquire(pg_oauth_shared->lock, LW_EXCLUSIVE);
	if (pg_oauth_shared->refresher == worker)
		pg_oauth_shared->refresher = -1;
	LWLockRelease(pg_oauth_shared->lock);
}

/*
 * A worker is leaving (normal exit, SIGTERM, FATAL): fail the request it
 * holds back to its backend, and if no worker remains able to answer, fail
 * the pending ones too instead of letting them run into the timeout.
 */
void
token_queue_worker_exit(int worker)
{
	WorkerInfo *w = &pg_oauth_shared->workers[worker];
	PGPROC	   *wake[PG_OAUTH_MAX_SLOTS];
	int			nwake = 0;
	int			i;

	/* a worker that exits (its database dropped, a crash) vouches for nothing cached */
	decision_cache_keys_changed();
	LWLockAcquire(pg_oauth_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < pg_oauth_shared->nslots; i++)
	{
		TokenSlot  *s = &pg_oauth_shared->slots[i];

		if (s->worker != worker)
			continue;
		if (s->state == SLOT_ABANDONED)
			slot_release_locked(s);
		else if (s->state == SLOT_WORKING)
		{
			set_failure(s, "validator_unavailable",
						"the validator worker exited while checking this token");
			s->state = SLOT_DONE;
			wake[nwake++] = s->backend;
		}
	}
	if (w->state == WORKER_STARTING)
		pg_oauth_strlcpy_text(w->last_error, "a validator worker exited before it was ready (see the server log)",
				sizeof(w->last_error));
	w->state = WORKER_STOPPED;
	w->proc = NULL;
	w->pid = 0;
	w->wakeup_pending = false;
	if (pg_oauth_shared->refresher == worker)
		pg_oauth_shared->refresher = -1;
	nwake = fail_pending_if_no_workers_locked(wake, nwake);
	LWLockRelease(pg_oauth_shared->lock);

	for (i = 0; i < nwake; i++)
		SetLatch(&wake[i]->procLatch);
	ConditionVariableBroadcast(&pg_oauth_shared->slot_freed);
}

static const char *
worker_state_name(WorkerState state)
{
	switch (state)
	{
		case WORKER_STOPPED:
			return "stopped";
		case WORKER_STARTING:
			return "starting";
		case WORKER_NOT_READY:
			return "not ready";
		case WORKER_IDLE:
			return "idle";
		case WORKER_BUSY:
			return "busy";
	}
	return "unknown";
}

Datum
pg_oauth_fn_workers(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			i;

	if (pg_oauth_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("pg_oauth is not loaded through shared_preload_libraries")));

	InitMaterializedSRF(fcinfo, 0);
	for (i = 0; i < pg_oauth_shared->nworkers; i++)
	{
		WorkerInfo	w;
		Datum		values[5];
		bool		nulls[5] = {false, false, false, false, false};

		LWLockAcquire(pg_oauth_shared->lock, LW_SHARED);
		w = pg_oauth_shared->workers[i];
		LWLockRelease(pg_oauth_shared->lock);

		values[0] = Int32GetDatum(i);
		values[1] = Int32GetDatum(w.pid);
		nulls[1] = (w.pid == 0);
		values[2] = CStringGetTextDatum(worker_state_name(w.state));
		values[3] = Int64GetDatum((int64) w.requests);
		values[4] = CStringGetTextDatum(w.last_error);
		nulls[4] = (w.last_error[0] == '\0');
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
