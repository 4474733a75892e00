/*
 * deadline - per-request time limits and the minimum data rate (see
 * deadline.h for the contract). Pure arithmetic plus the clock.
 */
#include <time.h>

#include "service/deadline.h"

void
deadline_init(struct deadline *d, int per_request, unsigned min_data_rate, long long now_ms)
{
	d->per_request = per_request;
	d->min_rate = min_data_rate;
	deadline_request(d, now_ms);
}

void
deadline_request(struct deadline *d, long long now_ms)
{
	d->start_ms = now_ms;
	d->credit_ms = 0;
}

void
deadline_read(struct deadline *d, size_t bytes, int message_data, long long now_ms)
{
	if (!d->per_request) {
		deadline_request(d, now_ms);	/* an idle timeout */
		return;
	}
	if (!message_data || d->min_rate == 0 || bytes == 0)
		return;
	/* a burst earns no more than the time spent so far: the remaining time
	 * never exceeds one timeout, whatever came before */
	d->credit_ms += (long long)(bytes / d->min_rate) * 1000 +
	    (long long)(bytes % d->min_rate) * 1000 / d->min_rate;
	if (d->credit_ms > now_ms - d->start_ms)
		d->credit_ms = now_ms - d->start_ms;
}

long long
deadline_due(const struct deadline *d, unsigned timeout_s)
{
	return d->start_ms + (long long)timeout_s * 1000 + d->credit_ms;
}

long long
deadline_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
