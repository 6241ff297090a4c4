/*-------------------------------------------------------------------------
 *
 * session_state.c
 *	  What a token login leaves behind in its backend (claims, issuer,
 *	  subject, expiry), the SQL functions that read it, and the
 *	  configuration-change signal.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

PG_FUNCTION_INFO_V1(pg_oauth_fn_claims);
PG_FUNCTION_INFO_V1(pg_oauth_fn_claim);
PG_FUNCTION_INFO_V1(pg_oauth_fn_claim_array);
PG_FUNCTION_INFO_V1(pg_oauth_fn_claim_contains);
PG_FUNCTION_INFO_V1(pg_oauth_fn_session);
PG_FUNCTION_INFO_V1(pg_oauth_fn_workers);
PG_FUNCTION_INFO_V1(pg_oauth_fn_config_version);
PG_FUNCTION_INFO_V1(pg_oauth_fn_config_changed);
PG_FUNCTION_INFO_V1(pg_oauth_fn_config_structure_version);
PG_FUNCTION_INFO_V1(pg_oauth_fn_kid_refetch_allowed);

OAuthSession pg_oauth_session = {false};

/* The session's claims parsed once, in TopMemoryContext; NULL until first use. */
static Jsonb *session_claims_jsonb = NULL;
/* bumped whenever the claims are set: the claim functions' caches are then stale */
static uint64 claims_generation = 0;

static char *
top_strdup(const char *s)
{
	return s ? MemoryContextStrdup(TopMemoryContext, s) : NULL;
}

/*
 * The hook runs inside the startup transaction: its memory dies with it, so
 * what the session keeps is copied to TopMemoryContext.
 */
void
session_state_remember(const TokenDecision *decision, const char *role)
{
	pg_oauth_session.issuer = top_strdup(decision->issuer);
	pg_oauth_session.subject = top_strdup(decision->subject);
	pg_oauth_session.token_id = top_strdup(decision->token_id);
	pg_oauth_session.claims = top_strdup(decision->claims);
	pg_oauth_session.role = top_strdup(role);
	pg_oauth_session.has_expires_at = decision->has_expires_at;
	pg_oauth_session.expires_at = decision->expires_at;
	pg_oauth_session.active = true;
	if (session_claims_jsonb != NULL)
		pfree(session_claims_jsonb);
	session_claims_jsonb = NULL;
	claims_generation++;
}

/*
 * The claims as jsonb, parsed on first use and kept for the session (they
 * never change after login): RLS policies call claim() once per row.
 */
static Jsonb *
session_claims(void)
{
	if (!pg_oauth_session.active || pg_oauth_session.claims == NULL)
		return NULL;
	if (session_claims_jsonb == NULL)
	{
		Jsonb	   *parsed;
		Jsonb	   *kept;

		parsed = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
													CStringGetDatum(pg_oauth_session.claims)));
		kept = MemoryContextAlloc(TopMemoryContext, VARSIZE(parsed));
		memcpy(kept, parsed, VARSIZE(parsed));
		pfree(parsed);
		session_claims_jsonb = kept;
	}
	return session_claims_jsonb;
}

Datum
pg_oauth_fn_claims(PG_FUNCTION_ARGS)
{
	Jsonb	   *claims = session_claims();
	Jsonb	   *copy;

	if (claims == NULL)
		PG_RETURN_NULL();
	copy = palloc(VARSIZE(claims));
	memcpy(copy, claims, VARSIZE(claims));
	PG_RETURN_JSONB_P(copy);
}

/* A JSON value as ->> shows it: strings unquoted, others as JSON text. */
static text *
jsonb_value_text(JsonbValue *v)
{
	switch (v->type)
	{
		case jbvString:
			return cstring_to_text_with_len(v->val.string.val, v->val.string.len);
		case jbvBool:
			return cstring_to_text(v->val.boolean ? "true" : "false");
		case jbvNumeric:
			return cstring_to_text(DatumGetCString(DirectFunctionCall1(numeric_out,
																	   NumericGetDatum(v->val.numeric))));
		case jbvBinary:
			{
				StringInfoData buf;

				initStringInfo(&buf);
				(void) JsonbToCString(&buf, v->val.binary.data, v->val.binary.len);
				return cstring_to_text_with_len(buf.data, buf.len);
			}
		default:
			elog(ERROR, "unexpected jsonb value type %d", (int) v->type);
	}
	return NULL;				/* keep the compiler quiet */
}

/*
 * The segments of a claim path, as regexp_matches(path, '"([^"]*)"|([^.]+)',
 * 'g') finds them (pyhook/claim_path.py splits the same way): at each
 * position the longer of a double-quoted segment and a run up to the next
 * dot, the quoted one on a tie; dots between segments are skipped.  Bytes
 * are safe to scan: every server encoding keeps ASCII bytes for ASCII.
 */
static int
split_claim_path(const char *p, int n, Datum *segments)
{
	int			count = 0;
	int			i = 0;

	while (i < n)
	{
		int			quoted_end = -1;
		int			plain_end = i;

		if (p[i] == '"')
		{
			const char *close = memchr(p + i + 1, '"', n - i - 1);

			if (close != NULL)
				quoted_end = (int) (close - p) + 1;
		}
		while (plain_end < n && p[plain_end] != '.')
			plain_end++;
		if (quoted_end == -1 && plain_end == i)
		{
			i++;				/* a dot: no segment starts here */
			continue;
		}
		if (quoted_end >= plain_end)
		{
			segments[count++] = PointerGetDatum(cstring_to_text_with_len(p + i + 1,
																		 quoted_end - i - 2));
			i = quoted_end;
		}
		else
		{
			segments[count++] = PointerGetDatum(cstring_to_text_with_len(p + i,
																		 plain_end - i));
			i = plain_end;
		}
	}
	return count;
}

/*
 * The claim at a path, as oauth.claim() finds it: a top-level claim whose
 * name is exactly the path wins; otherwise the path is split into segments
 * and followed like jsonb's #> (an integer segment indexes an array).  NULL
 * when absent or JSON null.  Containers come back as jbvBinary.
 */
static JsonbValue *
claim_value(Jsonb *claims, const char *p, int n)
{
	JsonbValue *v = palloc(sizeof(JsonbValue));
	Datum	   *segments;
	int			nsegments;
	bool		isnull;
	Datum		element;
	Jsonb	   *found;

	if (JB_ROOT_IS_OBJECT(claims))
	{
		if (getKeyJsonValueFromContainer(&claims->root, p, n, v) != NULL)
			return v->type == jbvNull ? NULL : v;
	}
	else
	{
		/* claims ? path on an array or scalar: an equal string element */
		JsonbValue	key;

		key.type = jbvString;
		key.val.string.val = (char *) p;
		key.val.string.len = n;
		if (findJsonbValueFromContainer(&claims->root, JB_FARRAY, &key) != NULL)
			return NULL;
	}

	segments = palloc(sizeof(Datum) * (n + 1));
	nsegments = split_claim_path(p, n, segments);
	if (nsegments == 0)
		return NULL;
	element = jsonb_get_element(claims, segments, nsegments, &isnull, false);
	if (isnull)
		return NULL;
	found = DatumGetJsonbP(element);
	if (JB_ROOT_IS_SCALAR(found))
	{
		(void) JsonbExtractScalar(&found->root, v);
		return v->type == jbvNull ? NULL : v;
	}
	v->type = jbvBinary;
	v->val.binary.data = &found->root;
	v->val.binary.len = VARSIZE(found) - VARHDRSZ;
	return v;
}

/*
 * A claim as text[]: an array claim gives its elements (strings unquoted,
 * other values as JSON text, JSON null as NULL), any other claim a
 * one-element array of what claim() returns.
 */
static ArrayType *
claim_as_array(JsonbValue *v)
{
	ArrayBuildState *elements = initArrayResult(TEXTOID, CurrentMemoryContext, false);

	if (v->type == jbvBinary && JsonContainerIsArray(v->val.binary.data))
	{
		JsonbIterator *it = JsonbIteratorInit(v->val.binary.data);
		JsonbValue	element;
		JsonbIteratorToken token;

		while ((token = JsonbIteratorNext(&it, &element, true)) != WJB_DONE)
		{
			if (token != WJB_ELEM)
				continue;
			if (element.type == jbvNull)
				accumArrayResult(elements, (Datum) 0, true, TEXTOID, CurrentMemoryContext);
			else
				accumArrayResult(elements, PointerGetDatum(jsonb_value_text(&element)), false,
								 TEXTOID, CurrentMemoryContext);
		}
	}
	else
		accumArrayResult(elements, PointerGetDatum(jsonb_value_text(v)), false,
						 TEXTOID, CurrentMemoryContext);
	return DatumGetArrayTypeP(makeArrayResult(elements, CurrentMemoryContext));
}

/*
 * RLS policies call the claim functions once per row, nearly always with a
 * constant path, and a session's claims never change after login: each call
 * site (FmgrInfo) keeps its last answer and only copies it out.
 */
typedef struct ClaimCache
{
	MemoryContext cxt;			/* everything below but the struct itself */
	uint64		generation;		/* claims_generation when filled */
	bool		filled;
	char	   *path;
	int			pathlen;
	bool		isnull;
	Datum		result;			/* claim(): text; claim_array(): text[] */
	int			nitems;			/* claim_contains(): the non-NULL elements */
	text	  **items;
} ClaimCache;

typedef enum ClaimForm
{
	CLAIM_TEXT,
	CLAIM_ARRAY,
	CLAIM_ITEMS
} ClaimForm;

static ClaimCache *
claim_lookup(FunctionCallInfo fcinfo, text *path, ClaimForm form)
{
	ClaimCache *cache = fcinfo->flinfo ? (ClaimCache *) fcinfo->flinfo->fn_extra : NULL;
	const char *p = VARDATA_ANY(path);
	int			n = VARSIZE_ANY_EXHDR(path);
	Jsonb	   *claims;
	JsonbValue *v;
	MemoryContext old;

	if (cache != NULL && cache->filled && cache->generation == claims_generation &&
		cache->pathlen == n && memcmp(cache->path, p, n) == 0)
		return cache;

	if (cache == NULL)
	{
		/* no FmgrInfo (a direct call): an answer for this call only */
		MemoryContext parent = fcinfo->flinfo ? fcinfo->flinfo->fn_mcxt : CurrentMemoryContext;

		cache = MemoryContextAllocZero(parent, sizeof(ClaimCache));
		cache->cxt = AllocSetContextCreate(parent, "pg_oauth claim cache",
										   ALLOCSET_SMALL_SIZES);
		if (fcinfo->flinfo)
			fcinfo->flinfo->fn_extra = cache;
	}
	else
		MemoryContextReset(cache->cxt);
	cache->filled = false;

	old = MemoryContextSwitchTo(cache->cxt);
	cache->path = palloc(n + 1);
	memcpy(cache->path, p, n);
	cache->pathlen = n;
	cache->isnull = true;
	cache->nitems = 0;
	claims = session_claims();
	v = claims == NULL ? NULL : claim_value(claims, p, n);
	if (v != NULL)
	{
		cache->isnull = false;
		if (form == CLAIM_TEXT)
			cache->result = PointerGetDatum(jsonb_value_text(v));
		else
		{
			ArrayType  *array = claim_as_array(v);

			cache->result = PointerGetDatum(array);
			if (form == CLAIM_ITEMS)
			{
				Datum	   *elements;
				bool	   *nulls;
				int			count;
				int			i;

				deconstruct_array(array, TEXTOID, -1, false, TYPALIGN_INT,
								  &elements, &nulls, &count);
				cache->items = palloc(sizeof(text *) * (count + 1));
				for (i = 0; i < count; i++)
					if (!nulls[i])
						cache->items[cache->nitems++] = DatumGetTextPP(elements[i]);
			}
		}
	}
	MemoryContextSwitchTo(old);
	cache->generation = claims_generation;
	cache->filled = true;
	return cache;
}

/* The cached answer, copied into the caller's memory (it may be freed there). */
static Datum
copy_varlena(Datum value)
{
	Size		size = VARSIZE_ANY(DatumGetPointer(value));
	void	   *copy = palloc(size);

	memcpy(copy, DatumGetPointer(value), size);
	return PointerGetDatum(copy);
}

/*
 * oauth.claim(path): one claim by path.  In C so that no operator or
 * function is looked up through the caller's search_path (a policy using it
 * must not be steerable by the user it restricts), and cheap per row.
 * Strings come back unquoted, other values as JSON text, JSON null as NULL.
 */
Datum
pg_oauth_fn_claim(PG_FUNCTION_ARGS)
{
	ClaimCache *cache;

	if (PG_ARGISNULL(0) || session_claims() == NULL)
		PG_RETURN_NULL();
	cache = claim_lookup(fcinfo, PG_GETARG_TEXT_PP(0), CLAIM_TEXT);
	if (cache->isnull)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(copy_varlena(cache->result));
}

/*
 * oauth.claim_array(path): a claim as text[], for "any of my groups":
 * group_id = ANY (oauth.claim_array('groups')).  NULL when absent.
 */
Datum
pg_oauth_fn_claim_array(PG_FUNCTION_ARGS)
{
	ClaimCache *cache;

	if (PG_ARGISNULL(0) || session_claims() == NULL)
		PG_RETURN_NULL();
	cache = claim_lookup(fcinfo, PG_GETARG_TEXT_PP(0), CLAIM_ARRAY);
	if (cache->isnull)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(copy_varlena(cache->result));
}

/*
 * oauth.claim_contains(path, value): true when an element of
 * claim_array(path) equals value byte for byte; false when none does, the
 * claim is absent, or the session did not log in with a token.
 */
Datum
pg_oauth_fn_claim_contains(PG_FUNCTION_ARGS)
{
	ClaimCache *cache;
	text	   *value;
	const char *v;
	int			n;
	int			i;

	if (session_claims() == NULL)
		PG_RETURN_BOOL(false);
	cache = claim_lookup(fcinfo, PG_GETARG_TEXT_PP(0), CLAIM_ITEMS);
	value = PG_GETARG_TEXT_PP(1);
	v = VARDATA_ANY(value);
	n = VARSIZE_ANY_EXHDR(value);
	for (i = 0; i < cache->nitems; i++)
	{
		text	   *item = cache->items[i];

		if (VARSIZE_ANY_EXHDR(item) == n && memcmp(VARDATA_ANY(item), v, n) == 0)
			PG_RETURN_BOOL(true);
	}
	PG_RETURN_BOOL(false);
}

Datum
pg_oauth_fn_session(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[5];
	bool		nulls[5];

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	memset(nulls, true, sizeof(nulls));
	if (pg_oauth_session.active)
	{
		if (pg_oauth_session.issuer)
		{
			values[0] = CStringGetTextDatum(pg_oauth_session.issuer);
			nulls[0] = false;
		}
		if (pg_oauth_session.subject)
		{
			values[1] = CStringGetTextDatum(pg_oauth_session.subject);
			nulls[1] = false;
		}
		if (pg_oauth_session.token_id)
		{
			values[2] = CStringGetTextDatum(pg_oauth_session.token_id);
			nulls[2] = false;
		}
		if (pg_oauth_session.has_expires_at)
		{
			values[3] = TimestampTzGetDatum(pg_oauth_session.expires_at);
			nulls[3] = false;
		}
		if (pg_oauth_session.role)
		{
			values[4] = CStringGetTextDatum(pg_oauth_session.role);
			nulls[4] = false;
		}
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
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

Datum
pg_oauth_fn_config_version(PG_FUNCTION_ARGS)
{
	if (pg_oauth_shared == NULL)
		PG_RETURN_NULL();
	PG_RETURN_INT64((int64) pg_atomic_read_u64(&pg_oauth_shared->config_version));
}

/*
 * The version moves only once the change is committed: a worker that sees the
 * new number and then takes its snapshot is sure to see the new rows.
 */
static bool config_change_pending = false;
static bool config_structure_pending = false;
static bool xact_callback_registered = false;

static void
config_xact_callback(XactEvent event, void *arg)
{
	if (!config_change_pending)
		return;
	/*
	 * COMMIT PREPARED runs in another session, where nothing would move the
	 * version: the cache and the workers would keep the old configuration.
	 */
	if (event == XACT_EVENT_PRE_PREPARE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("pg_oauth configuration changes cannot be prepared for two-phase commit"),
				 errhint("Change issuers, role_map or revocations in an ordinary transaction.")));
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT)
	{
		bool		structure = config_structure_pending;

		config_change_pending = config_structure_pending = false;
		if (pg_oauth_shared != NULL)
		{
			/* first: a worker that sees the new version sees this too */
			if (structure)
				pg_atomic_fetch_add_u64(&pg_oauth_shared->config_structure, 1);
			pg_atomic_fetch_add_u64(&pg_oauth_shared->config_version, 1);
			pg_oauth_wake_all_workers();
		}
		/* after the version moved: see pg_oauth_fn_end_sessions */
		session_registry_end_pending(true);
	}
	else if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
	{
		config_change_pending = config_structure_pending = false;
		session_registry_end_pending(false);
	}
}

/* This transaction changed the configuration: move the version at commit. */
void
pg_oauth_note_config_change(void)
{
	if (!xact_callback_registered)
	{
		RegisterXactCallback(config_xact_callback, NULL);
		xact_callback_registered = true;
	}
	config_change_pending = true;
}

/*
 * This transaction changed what the configuration triggers may not have seen
 * (a statement config_guard.c noted: DDL, COPY, TRUNCATE, drops): workers must
 * not trust the triggers' counters for it and read everything again.
 */
void
pg_oauth_note_config_structure_change(void)
{
	pg_oauth_note_config_change();
	config_structure_pending = true;
}

Datum
pg_oauth_fn_config_structure_version(PG_FUNCTION_ARGS)
{
	if (pg_oauth_shared == NULL)
		PG_RETURN_NULL();
	PG_RETURN_INT64((int64) pg_atomic_read_u64(&pg_oauth_shared->config_structure));
}

Datum
pg_oauth_fn_config_changed(PG_FUNCTION_ARGS)
{
	pg_oauth_note_config_change();
	PG_RETURN_VOID();
}

/*
 * May a worker refetch this issuer's keys for an unknown kid now?  At most
 * once per cooldown per issuer across all workers: each worker has its own
 * key cache, and a storm of random kids must not multiply fetches by the
 * number of workers.  Claims the slot when it answers true.
 */
Datum
pg_oauth_fn_kid_refetch_allowed(PG_FUNCTION_ARGS)
{
	text	   *issuer = PG_GETARG_TEXT_PP(0);
	double		cooldown_s = PG_GETARG_FLOAT8(1);
	TimestampTz now = GetCurrentTimestamp();
	uint8		hash[PG_OAUTH_TOKEN_HASH_LEN];
	KidRefetch *slot = NULL;
	KidRefetch *oldest = NULL;
	bool		allowed = true;
	int			i;

	if (pg_oauth_shared == NULL)
		PG_RETURN_BOOL(true);
	/* issuers are told apart whole, whatever their length */
	pg_oauth_sha256(VARDATA_ANY(issuer), VARSIZE_ANY_EXHDR(issuer), hash);

	LWLockAcquire(pg_oauth_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < PG_OAUTH_REFETCH_ISSUERS; i++)
	{
		KidRefetch *r = &pg_oauth_shared->kid_refetch[i];

		if (r->used && memcmp(r->issuer_hash, hash, PG_OAUTH_TOKEN_HASH_LEN) == 0)
		{
			slot = r;
			break;
		}
		if (oldest == NULL || r->at < oldest->at)
			oldest = r;
	}
	if (slot != NULL &&
		now < TimestampTzPlusMilliseconds(slot->at, (int64) (cooldown_s * 1000.0)))
		allowed = false;
	else
	{
		if (slot == NULL)
		{
			slot = oldest;
			slot->used = true;
			memcpy(slot->issuer_hash, hash, PG_OAUTH_TOKEN_HASH_LEN);
		}
		slot->at = now;
	}
	LWLockRelease(pg_oauth_shared->lock);
	PG_RETURN_BOOL(allowed);
}
