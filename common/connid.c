/*
 * connid - connection ids for the logs (see connid.h).
 */
#include <stdio.h>
#include <unistd.h>

#include "common/connid.h"

static unsigned long counter;

void
connid_new(char id[CONNID_MAX])
{
	unsigned long n = __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);

	snprintf(id, CONNID_MAX, "%06lX%06lX", (unsigned long)getpid() & 0xFFFFFFUL,
	    n & 0xFFFFFFUL);
}
