#ifndef PC_RELAY_SEND_H
#define PC_RELAY_SEND_H
#include <stddef.h>

/*
 * A blocking SMTP client for one message to the relayhost, for a job
 * thread (never the event loop): what the delivery job uses to send the
 * user Sieve scripts' redirects, vacation replies and refusals
 * (storage-adapter/sieve_deliver.h) before the 250.
 *
 *   relay_send()  connect to "[HOST]:PORT" (numeric, as `relayhost`),
 *                 greeting, EHLO (HELO when refused), MAIL FROM, RCPT TO,
 *                 DATA with the text (or the file fd from offset 0) with
 *                 bare LF made CRLF and the dot-stuffing added, the final
 *                 dot, QUIT. timeout: seconds per reply and per write.
 *
 * 0 when the relayhost took the message (2xx after the dot), else -1 with
 * reply (>= 64 bytes) holding its refusal ("550 ...", made printable) or
 * our own "451 4.4.1 ..." for a network failure. Replies are capped at
 * RELAY_REPLY_MAX per line and 100 lines.
 */
#define RELAY_REPLY_MAX 512

int relay_send(const char *target, const char *helo, unsigned timeout, const char *from,
    const char *rcpt, const char *text, int fd, char *reply, size_t replysz)
    __attribute__((warn_unused_result));
/* the same with text (NULL: none) sent first, then fd (-1: none) from
 * offset start: a redirect's added header lines before the stored message
 * less its Return-Path: */
int relay_send_at(const char *target, const char *helo, unsigned timeout, const char *from,
    const char *rcpt, const char *text, int fd, long long start, char *reply, size_t replysz)
    __attribute__((warn_unused_result));

#endif
