/*
 * sieve_defs.c - the command and test table: every command and test the
 * interpreter knows, with the capability that enables it, its positional
 * arguments and its tagged arguments (signatures for sieve_compile.c).
 *
 *   sv_def_find(name, is_test)  the row, or NULL
 *   sv_def_find_any(name)       the row of either kind
 */
#include <string.h>
#include <strings.h>
#include "rules/sieve_ast.h"

#define T(...) (const char *const[]){ __VA_ARGS__, NULL }
#define NOTAGS (const char *const[]){ NULL }
#define G_MC (SIEVE_G_MATCH | SIEVE_G_COMP)
#define G_MCA (SIEVE_G_MATCH | SIEVE_G_COMP | SIEVE_G_ADDR)

/* pos: n number, s string, l string list, '?' the rest are optional;
 * tags: ":name" or ":name=TYPE" [ "@ext" ] */
static const struct sv_def defs[] = {
	{ "require", NULL, 0, C_REQUIRE, "l", NOTAGS, 0, 0, 0 },
	{ "if", NULL, 0, C_IF, "", NOTAGS, 0, 1, 1 },
	{ "elsif", NULL, 0, C_ELSIF, "", NOTAGS, 0, 1, 1 },
	{ "else", NULL, 0, C_ELSE, "", NOTAGS, 0, 1, 0 },
	{ "stop", NULL, 0, C_STOP, "", NOTAGS, 0, 0, 0 },
	{ "keep", NULL, 0, C_KEEP, "", T(":flags=l@imap4flags"), 0, 0, 0 },
	{ "discard", NULL, 0, C_DISCARD, "", NOTAGS, 0, 0, 0 },
	{ "redirect", NULL, 0, C_REDIRECT, "s", T(":copy@copy", ":list=s@extlists"), 0, 0, 0 },
	{ "fileinto", "fileinto", 0, C_FILEINTO, "s",
	  T(":copy@copy", ":flags=l@imap4flags", ":create@mailbox", ":specialuse=s@special-use"), 0, 0, 0 },
	{ "reject", "reject", 0, C_REJECT, "s", NOTAGS, 0, 0, 0 },
	{ "ereject", "ereject", 0, C_EREJECT, "s", NOTAGS, 0, 0, 0 },
	{ "set", "variables", 0, C_SET, "ss",
	  T(":lower", ":upper", ":lowerfirst", ":upperfirst", ":quotewildcard", ":length",
	    ":quoteregex@regex", ":encodeurl@enotify"), 0, 0, 0 },
	{ "addflag", "imap4flags", 0, C_ADDFLAG, "l?l", NOTAGS, 0, 0, 0 },
	{ "setflag", "imap4flags", 0, C_SETFLAG, "l?l", NOTAGS, 0, 0, 0 },
	{ "removeflag", "imap4flags", 0, C_REMOVEFLAG, "l?l", NOTAGS, 0, 0, 0 },
	{ "addheader", "editheader", 0, C_ADDHEADER, "ss", T(":last"), 0, 0, 0 },
	{ "deleteheader", "editheader", 0, C_DELETEHEADER, "s?l", T(":index=n", ":last"), G_MC, 0, 0 },
	{ "vacation", "vacation", 0, C_VACATION, "s",
	  T(":days=n", ":seconds=n@vacation-seconds", ":subject=s", ":from=s", ":addresses=l",
	    ":mime", ":handle=s"), 0, 0, 0 },
	{ "include", "include", 0, C_INCLUDE, "s", T(":personal", ":global", ":once", ":optional"), 0, 0, 0 },
	{ "return", "include", 0, C_RETURN, "", NOTAGS, 0, 0, 0 },
	{ "global", "include", 0, C_GLOBAL, "l", NOTAGS, 0, 0, 0 },
	{ "error", "ihave", 0, C_ERROR, "s", NOTAGS, 0, 0, 0 },

	{ "address", NULL, 1, T_ADDRESS, "ll", T(":index=n@index", ":last@index"), G_MCA, 0, 0 },
	{ "header", NULL, 1, T_HEADER, "ll", T(":index=n@index", ":last@index"), G_MC, 0, 0 },
	{ "envelope", "envelope", 1, T_ENVELOPE, "ll", NOTAGS, G_MCA, 0, 0 },
	{ "exists", NULL, 1, T_EXISTS, "l", NOTAGS, 0, 0, 0 },
	{ "size", NULL, 1, T_SIZE, "n", T(":over", ":under"), 0, 0, 0 },
	{ "allof", NULL, 1, T_ALLOF, "", NOTAGS, 0, 0, 2 },
	{ "anyof", NULL, 1, T_ANYOF, "", NOTAGS, 0, 0, 2 },
	{ "not", NULL, 1, T_NOT, "", NOTAGS, 0, 0, 1 },
	{ "true", NULL, 1, T_TRUE, "", NOTAGS, 0, 0, 0 },
	{ "false", NULL, 1, T_FALSE, "", NOTAGS, 0, 0, 0 },
	{ "string", "variables", 1, T_STRING, "ll", NOTAGS, G_MC, 0, 0 },
	{ "hasflag", "imap4flags", 1, T_HASFLAG, "l?l", NOTAGS, G_MC, 0, 0 },
	{ "body", "body", 1, T_BODY, "l", T(":raw", ":content=l", ":text"), G_MC, 0, 0 },
	{ "date", "date", 1, T_DATE, "ssl", T(":zone=s", ":originalzone", ":index=n@index", ":last@index"),
	  G_MC, 0, 0 },
	{ "currentdate", "date", 1, T_CURRENTDATE, "sl", T(":zone=s"), G_MC, 0, 0 },
	{ "mailboxexists", "mailbox", 1, T_MAILBOXEXISTS, "l", NOTAGS, 0, 0, 0 },
	{ "environment", "environment", 1, T_ENVIRONMENT, "sl", NOTAGS, G_MC, 0, 0 },
	{ "duplicate", "duplicate", 1, T_DUPLICATE, "",
	  T(":handle=s", ":header=s", ":uniqueid=s", ":seconds=n", ":last"), 0, 0, 0 },
	{ "ihave", "ihave", 1, T_IHAVE, "l", NOTAGS, 0, 0, 0 },
	{ NULL, NULL, 0, 0, NULL, NULL, 0, 0, 0 },
};

const struct sv_def *sv_def_find(const char *name, int is_test)
{
	for (const struct sv_def *d = defs; d->name; d++)
		if (d->is_test == is_test && strcasecmp(d->name, name) == 0)
			return d;
	return NULL;
}

const struct sv_def *sv_def_find_any(const char *name)
{
	for (const struct sv_def *d = defs; d->name; d++)
		if (strcasecmp(d->name, name) == 0)
			return d;
	return NULL;
}
