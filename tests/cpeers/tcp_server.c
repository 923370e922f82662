/* tcp_server.c - a classic iterative TCP server on 127.0.0.1.
 *
 * Accepts COUNT clients one after the other; from each it reads one message,
 * prints it, sends back REPLY with its terminating NUL, and closes.
 * The bound port is printed as the first line (useful with PORT 0).
 *
 * usage: tcp_server PORT [COUNT] [REPLY]
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE 4096

static void die(const char *what)
{
	perror(what);
	exit(1);
}

int main(int argc, char *argv[])
{
	struct sockaddr_in addr, peer;
	socklen_t len;
	char buf[BUF_SIZE];
	const char *reply;
	int sfd, cfd, i, count, on = 1;
	ssize_t n;

	if (argc < 2 || argc > 4) {
		fprintf(stderr, "usage: %s PORT [COUNT] [REPLY]\n", argv[0]);
		exit(1);
	}
	count = argc > 2 ? atoi(argv[2]) : 1;
	reply = argc > 3 ? argv[3] : "hello from the C server";
	setvbuf(stdout, NULL, _IOLBF, 0);

	sfd = socket(AF_INET, SOCK_STREAM, 0);
	if (sfd == -1)
		die("socket");
	if (setsockopt(sfd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) == -1)
		die("setsockopt");

	memset(&addr, 0, sizeof(addr));
	addr.sin_family = AF_INET;
	addr.sin_port = htons(atoi(argv[1]));
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(sfd, (struct sockaddr *)&addr, sizeof(addr)) == -1)
		die("bind");
	if (listen(sfd, 5) == -1)
		die("listen");

	len = sizeof(addr);
	if (getsockname(sfd, (struct sockaddr *)&addr, &len) == -1)
		die("getsockname");
	printf("%d\n", ntohs(addr.sin_port));
	fflush(stdout);

	for (i = 0; i < count; i++) {
		len = sizeof(peer);
		cfd = accept(sfd, (struct sockaddr *)&peer, &len);
		if (cfd == -1)
			die("accept");
		n = read(cfd, buf, sizeof(buf) - 1);
		if (n == -1)
			die("read");
		buf[n] = '\0';
		printf("from %s:%d %zd bytes: %s\n", inet_ntoa(peer.sin_addr),
		       ntohs(peer.sin_port), n, buf);
		if (write(cfd, reply, strlen(reply) + 1) == -1)
			die("write");
		if (close(cfd) == -1)
			die("close");
	}
	close(sfd);
	return 0;
}
