/*
 * libFuzzer target: arbitrary bytes as the extra fields of a users-file line
 * into the proxy fields' parser (storage-adapter/userdb, issue 12). Must
 * never crash or overrun; a result of 1 always has a numeric host or a
 * well-formed DNS name.
 */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "storage-adapter/userdb.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);
	struct userdb_proxy px;
	const char *err = NULL;
	unsigned char a[16];

	if (s == NULL)
		return 0;
	memcpy(s, data, size);
	s[size] = '\0';
	if (userdb_proxy_parse(s, &px, &err) == 1 && inet_pton(AF_INET, px.host, a) != 1 &&
	    inet_pton(AF_INET6, px.host, a) != 1 && !userdb_is_hostname(px.host))
		abort();
	free(s);
	return 0;
}
