/* unix_server.c - a classic iterative AF_UNIX stream server.
 *
 * Removes a stale socket file at PATH, binds and listens there, prints PATH as
 * the first line, then accepts COUNT clients one after the other: reads one
 * message from each, prints it, sends back REPLY with its terminating NUL and
 * closes. The socket file is unlinked on exit (also on SIGINT/SIGTERM).
 *
 * usage: unix_server PATH [COUNT] [REPLY]
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define BUF_SIZE 4096

static const char *path;

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void on_signal(int sig)
{
	unlink(path);
	_exit(128 + sig);
}

int main(int argc, char *argv[])
{
	struct sockaddr_un addr;
	char buf[BUF_SIZE];
	const char *reply;
	int sfd, cfd, i, count;
	ssize_t n;

	if (argc < 2 || argc > 4) {
		fprintf(stderr, "usage: %s PATH [COUNT] [REPLY]\n", argv[0]);
		exit(1);
	}
	path = argv[1];
	count = argc > 2 ? atoi(argv[2]) : 1;
	reply = argc > 3 ? argv[3] : "hello from the C server";
	setvbuf(stdout, NULL, _IOLBF, 0);

	memset(&addr, 0, sizeof(addr));
	addr.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(addr.sun_path)) {
		fprintf(stderr, "socket path too long: %s\n", path);
		exit(1);
	}
	strcpy(addr.sun_path, path);

	if (unlink(path) == -1 && errno != ENOENT)
		die("unlink");
	sfd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (sfd == -1)
		die("socket");
	if (bind(sfd, (struct sockaddr *)&addr, sizeof(addr)) == -1)
		die("bind");
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	if (listen(sfd, 5) == -1)
		die("listen");
	printf("%s\n", path);
	fflush(stdout);

	for (i = 0; i < count; i++) {
		cfd = accept(sfd, NULL, NULL);
		if (cfd == -1)
			die("accept");
		n = read(cfd, buf, sizeof(buf) - 1);
		if (n == -1)
			die("read");
		buf[n] = '\0';
		printf("%zd bytes: %s\n", n, buf);
		if (write(cfd, reply, strlen(reply) + 1) == -1)
			die("write");
		if (close(cfd) == -1)
			die("close");
	}
	close(sfd);
	if (unlink(path) == -1)
		die("unlink");
	return 0;
}
