/*
 * sieve_date.c - RFC 5260 date parts: parse an RFC 5322 date, move it to a
 * zone (:zone, :originalzone, or the local zone), format the part asked for.
 *
 *   sv_date_part(date, zone, originalzone, part, now, &val)
 *     date NULL: use `now` (currentdate). 0, or -1 when the date does not
 *     parse or the part is unknown (the test then has no value to match).
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include "rules/sieve_eval.h"
#include "common/xmalloc.h"

static const char *const months[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul",
	"Aug", "Sep", "Oct", "Nov", "Dec" };
static const char *const wdays[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };

/* days since 1970-01-01 of a civil date */
static long days_from_civil(long y, unsigned m, unsigned d)
{
	y -= m <= 2;
	long era = (y >= 0 ? y : y - 399) / 400;
	unsigned yoe = (unsigned)(y - era * 400);
	unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (long)doe - 719468;
}

static void civil_from_days(long z, long *y, unsigned *m, unsigned *d)
{
	z += 719468;
	long era = (z >= 0 ? z : z - 146096) / 146097;
	unsigned doe = (unsigned)(z - era * 146097);
	unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	long yy = (long)yoe + era * 400;
	unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	unsigned mp = (5 * doy + 2) / 153;
	*d = doy - (153 * mp + 2) / 5 + 1;
	*m = mp < 10 ? mp + 3 : mp - 9;
	*y = yy + (*m <= 2);
}

static int parse_zone(const char *z, int *off_r)
{
	while (*z == ' ')
		z++;
	if ((z[0] == '+' || z[0] == '-') && isdigit((unsigned char)z[1]) &&
	    isdigit((unsigned char)z[2]) && isdigit((unsigned char)z[3]) &&
	    isdigit((unsigned char)z[4])) {
		int h = (z[1] - '0') * 10 + (z[2] - '0'), m = (z[3] - '0') * 10 + (z[4] - '0');
		if (m > 59)
			return -1;
		*off_r = (z[0] == '-' ? -1 : 1) * (h * 60 + m);
		return 0;
	}
	static const struct { const char *n; int o; } names[] = {
		{ "UT", 0 }, { "GMT", 0 }, { "Z", 0 }, { "EST", -300 }, { "EDT", -240 },
		{ "CST", -360 }, { "CDT", -300 }, { "MST", -420 }, { "MDT", -360 },
		{ "PST", -480 }, { "PDT", -420 },
	};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strncasecmp(z, names[i].n, strlen(names[i].n)) == 0) {
			*off_r = names[i].o;
			return 0;
		}
	*off_r = 0;	/* RFC 5322: unknown zones are -0000 */
	return 1;
}

/* -> seconds since the epoch (UTC) and the zone offset in minutes */
static int parse_date(const char *s, long long *t_r, int *zone_r)
{
	const char *p = s;
	while (*p == ' ' || *p == '\t')
		p++;
	if (isalpha((unsigned char)*p)) {
		while (isalpha((unsigned char)*p))
			p++;
		while (*p == ' ')
			p++;
		if (*p == ',')
			p++;
	}
	char mon[4] = "";
	int day, year, hh, mm, ss = 0, used = 0;
	if (sscanf(p, " %d %3s %d %d:%d%n", &day, mon, &year, &hh, &mm, &used) < 5)
		return -1;
	p += used;
	if (*p == ':') {
		int u2 = 0;
		if (sscanf(p, ":%d%n", &ss, &u2) < 1)
			return -1;
		p += u2;
	}
	int m = -1;
	for (int i = 0; i < 12; i++)
		if (strcasecmp(mon, months[i]) == 0)
			m = i + 1;
	if (m < 0 || day < 1 || day > 31 || hh > 23 || mm > 59 || ss > 60)
		return -1;
	if (year < 50)
		year += 2000;
	else if (year < 1000)
		year += 1900;
	int zone = 0;
	if (parse_zone(p, &zone) < 0)
		return -1;
	long long t = (long long)days_from_civil(year, (unsigned)m, (unsigned)day) * 86400 +
	    hh * 3600 + mm * 60 + ss;
	*t_r = t - zone * 60;
	*zone_r = zone;
	return 0;
}

int sv_date_part(const char *date, const char *zone, int originalzone, const char *part,
    long now, char **val_r)
{
	long long t;
	int dzone = 0;
	if (date == NULL) {
		t = now;
	} else if (parse_date(date, &t, &dzone) < 0) {
		return -1;
	}
	int z;
	if (zone) {
		if (parse_zone(zone, &z) != 0)
			return -1;
	} else if (originalzone && date) {
		z = dzone;
	} else {
		time_t tt = (time_t)t;
		struct tm lt;
		localtime_r(&tt, &lt);
		z = (int)(lt.tm_gmtoff / 60);
	}
	long long lt = t + z * 60;
	long days = (long)(lt >= 0 ? lt / 86400 : (lt - 86399) / 86400);
	long secs = (long)(lt - (long long)days * 86400);
	long y;
	unsigned mo, d;
	civil_from_days(days, &y, &mo, &d);
	int h = (int)(secs / 3600), mi = (int)(secs / 60 % 60), se = (int)(secs % 60);
	int wd = (int)((days % 7 + 11) % 7);	/* 1970-01-01 was a Thursday */
	char zs[16];
	snprintf(zs, sizeof(zs), "%c%02d%02d", z < 0 ? '-' : '+', abs(z) / 60, abs(z) % 60);
	char b[64];
	if (!strcasecmp(part, "year")) snprintf(b, sizeof(b), "%04ld", y);
	else if (!strcasecmp(part, "month")) snprintf(b, sizeof(b), "%02u", mo);
	else if (!strcasecmp(part, "day")) snprintf(b, sizeof(b), "%02u", d);
	else if (!strcasecmp(part, "date")) snprintf(b, sizeof(b), "%04ld-%02u-%02u", y, mo, d);
	else if (!strcasecmp(part, "julian")) snprintf(b, sizeof(b), "%ld", days + 40587);
	else if (!strcasecmp(part, "hour")) snprintf(b, sizeof(b), "%02d", h);
	else if (!strcasecmp(part, "minute")) snprintf(b, sizeof(b), "%02d", mi);
	else if (!strcasecmp(part, "second")) snprintf(b, sizeof(b), "%02d", se);
	else if (!strcasecmp(part, "time")) snprintf(b, sizeof(b), "%02d:%02d:%02d", h, mi, se);
	else if (!strcasecmp(part, "iso8601"))
		snprintf(b, sizeof(b), "%04ld-%02u-%02uT%02d:%02d:%02d%c%02d:%02d", y, mo, d, h, mi,
		    se, z < 0 ? '-' : '+', abs(z) / 60, abs(z) % 60);
	else if (!strcasecmp(part, "std11"))
		snprintf(b, sizeof(b), "%s, %02u %s %04ld %02d:%02d:%02d %s", wdays[wd], d,
		    months[mo - 1], y, h, mi, se, zs);
	else if (!strcasecmp(part, "zone")) snprintf(b, sizeof(b), "%s", zs);
	else if (!strcasecmp(part, "weekday")) snprintf(b, sizeof(b), "%d", wd);
	else return -1;
	*val_r = xstrdup(b);
	return 0;
}
