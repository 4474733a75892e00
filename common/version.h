#ifndef PC_VERSION_H
#define PC_VERSION_H
/* The one version string of portcullisd and portcullis (--version). */
#define PORTCULLIS_VERSION "0.9.0"
#endif
