/*
 * libFuzzer target: the proxy's backend login (pop-imap-proxy/proxy_reply,
 * issue 12). The first byte picks IMAP or POP3, STARTTLS and the client's
 * address; the rest are the backend's lines ('\n' between them; a line
 * starting with 0x01 is a finished TLS handshake instead). Must never
 * crash or overrun; a PR_SEND always has CRLF-terminated lines to send; a
 * verdict, once given, is given again for whatever follows.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pop-imap-proxy/proxy_reply.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct proxy_reply *pr;
	enum proxy_reply_act verdict = PR_NONE;
	size_t i = 1;

	if (size < 1)
		return 0;
	pr = proxy_reply_new(data[0] & 1, (data[0] >> 1) & 1, "alice@example.com", "secret");
	if (data[0] & 4)
		proxy_reply_set_client(pr, "192.0.2.7", 50000, "127.0.0.1", 143);
	while (i <= size) {
		const uint8_t *nl = i < size ? memchr(data + i, '\n', size - i) : NULL;
		size_t n = (nl != NULL ? (size_t)(nl - data) : size) - i;
		/* the line in a buffer of its exact size: an overrun is seen */
		char *l = malloc(n ? n : 1);
		enum proxy_reply_act act;

		memcpy(l, data + i, n);
		act = n > 0 && l[0] == 1 ? proxy_reply_tls_done(pr) : proxy_reply_line(pr, l, n);
		free(l);
		if (verdict >= PR_OK && act != verdict)
			abort();
		if (act >= PR_OK)
			verdict = act;
		if (act == PR_SEND) {
			const char *out = proxy_reply_out(pr);
			size_t ol = strlen(out);

			if (ol < 2 || out[ol - 2] != '\r' || out[ol - 1] != '\n')
				abort();
		}
		if (strlen(proxy_reply_caps(pr)) >= PROXY_REPLY_CAPS_MAX)
			abort();
		if (nl == NULL)
			break;
		i += n + 1;
	}
	proxy_reply_free(&pr);
	return 0;
}
