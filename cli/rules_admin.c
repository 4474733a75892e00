/* placeholder replaced below */
#include <stdio.h>
#include "common/conf.h"
int cmd_rules_admin(struct conf *conf, int argc, char **argv);
int cmd_rules_admin(struct conf *conf, int argc, char **argv)
{ (void)conf; (void)argc; (void)argv; fprintf(stderr, "usage: portcullis rules check FILE\n"); return 2; }
