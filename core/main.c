/* main: the chatd entry point; everything else lives in server.c. */
#include "server.h"

int main(int argc, char **argv) { return server_run(argc, argv); }
