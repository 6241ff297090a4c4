/*-------------------------------------------------------------------------
 *
 * claim_path.c
 *	  oauth.claim(), oauth.claim_array() and oauth.claim_contains(): one
 *	  claim of the session's token, found by a dotted path through its JSON.
 *
 * In C so that no operator or function is looked up through the caller's
 * search_path (a row-level security policy using them must not be steerable
 * by the user it restricts), and cheap per row: each call site keeps its
 * last answer until the session's claims change (session_state.c).  The
 * path is split the way pyhook/claim_path.py splits role_map's claim paths.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

PG_FUNCTION_INFO_V1(pg_oauth_fn_claim);
PG_FUNCTION_INFO_V1(pg_oauth_fn_claim_array);
PG_FUNCTION_INFO_V1(pg_oauth_fn_claim_contains);

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
	uint64		generation;		/* session_state_claims_generation() when filled */
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

	if (cache != NULL && cache->filled && cache->generation == session_state_claims_generation() &&
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
	claims = session_state_claims();
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
	cache->generation = session_state_claims_generation();
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

	if (PG_ARGISNULL(0) || session_state_claims() == NULL)
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

	if (PG_ARGISNULL(0) || session_state_claims() == NULL)
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

	if (session_state_claims() == NULL)
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
