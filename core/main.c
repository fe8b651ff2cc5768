/* main: the chatd entry point. workers.c decides between one node in this
 * process (server.c) and a supervisor of several (chatd --workers N). */
#include "workers.h"

int main(int argc, char **argv) { return workers_main(argc, argv); }
