#ifndef PC_DEADLINE_H
#define PC_DEADLINE_H
/*
 * deadline - the time limit on one client request, for every network door
 * (Postfix 3.7's smtpd_per_request_deadline and smtpd_min_data_rate).
 *
 * Per request, the timeout bounds the whole command line, however it is
 * split: one byte per timeout no longer keeps a connection for ever. While
 * message data flows, each read earns bytes / min_data_rate seconds, never
 * more than the time already spent: a client that keeps up the rate is never
 * cut, one below it is. Without per_request, the timeout is an idle timeout
 * (each read restarts it), as before.
 *
 * Pure: times are milliseconds on the caller's monotonic clock.
 */
#include <stddef.h>

struct deadline {
	long long start_ms;	/* the request began */
	long long credit_ms;	/* earned by message data */
	unsigned min_rate;	/* bytes/s; 0: message data earns nothing */
	int per_request;
};

void deadline_init(struct deadline *d, int per_request, unsigned min_data_rate, long long now_ms);
/* a new request begins (the answer to the last one is out) */
void deadline_request(struct deadline *d, long long now_ms);
/* bytes arrived; message_data: they are part of a message (DATA) */
void deadline_read(struct deadline *d, size_t bytes, int message_data, long long now_ms);
/* when the request times out, with this timeout */
long long deadline_due(const struct deadline *d, unsigned timeout_s);
/* the monotonic clock, in ms */
long long deadline_now_ms(void);

#endif
