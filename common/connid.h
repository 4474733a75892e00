#ifndef PC_CONNID_H
#define PC_CONNID_H
/*
 * connid - a short id for one connection, given at accept (or at the
 * milter's connect), that every log line of the connection carries as
 * "conn=ID": the engine's verdicts, the door's own lines, the pass-through
 * session's and the delivery's, so they can be tied to their session.
 * Twelve upper-case hex digits: the process id, then a counter; unique
 * among the daemon's workers (each is a process) until the counter wraps
 * after 16 million connections. Thread-safe (the milter's threads).
 */
#define CONNID_MAX 16	/* an id and its NUL */

void connid_new(char id[CONNID_MAX]);

#endif
