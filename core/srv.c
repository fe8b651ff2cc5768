/* srv: the one instance of the process-wide context (see srv.h). */
#include "srv.h"

server g_srv;
