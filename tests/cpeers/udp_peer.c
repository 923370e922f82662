/* udp_peer.c - a classic UDP server or client on IPv4.
 *
 * server: binds 127.0.0.1:PORT, prints the bound port as the first line, then
 *         COUNT times: recvfrom a datagram, print it with its sender, sendto
 *         REPLY (with its terminating NUL) back to that sender.
 * client: sendto HOST PORT the MESSAGE (with its terminating NUL), wait at
 *         most TIMEOUT seconds (SO_RCVTIMEO) for the reply and print it.
 *
 * usage: udp_peer server PORT COUNT [REPLY]
 *        udp_peer client HOST PORT MESSAGE [TIMEOUT]
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define BUF_SIZE 65536

static char buf[BUF_SIZE];

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void usage(const char *prog)
{
	fprintf(stderr, "usage: %s server PORT COUNT [REPLY]\n"
			"       %s client HOST PORT MESSAGE [TIMEOUT]\n", prog, prog);
	exit(1);
}

static void server(int port, int count, const char *reply)
{
	struct sockaddr_in addr, peer;
	socklen_t len;
	ssize_t n;
	int fd, i;

	fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd == -1)
		die("socket");
	memset(&addr, 0, sizeof(addr));
	addr.sin_family = AF_INET;
	addr.sin_port = htons(port);
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) == -1)
		die("bind");
	len = sizeof(addr);
	if (getsockname(fd, (struct sockaddr *)&addr, &len) == -1)
		die("getsockname");
	printf("%d\n", ntohs(addr.sin_port));
	fflush(stdout);

	for (i = 0; i < count; i++) {
		len = sizeof(peer);
		n = recvfrom(fd, buf, sizeof(buf) - 1, 0, (struct sockaddr *)&peer, &len);
		if (n == -1)
			die("recvfrom");
		buf[n] = '\0';
		printf("from %s:%d %zd bytes: %s\n", inet_ntoa(peer.sin_addr),
		       ntohs(peer.sin_port), n, buf);
		if (sendto(fd, reply, strlen(reply) + 1, 0, (struct sockaddr *)&peer, len) == -1)
			die("sendto");
	}
	close(fd);
}

static void client(const char *host, int port, const char *msg, int timeout)
{
	struct sockaddr_in addr;
	struct timeval tv;
	ssize_t n;
	int fd;

	memset(&addr, 0, sizeof(addr));
	addr.sin_family = AF_INET;
	addr.sin_port = htons(port);
	if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
		fprintf(stderr, "bad IPv4 address: %s\n", host);
		exit(1);
	}
	fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd == -1)
		die("socket");
	tv.tv_sec = timeout;
	tv.tv_usec = 0;
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) == -1)
		die("setsockopt");

	if (sendto(fd, msg, strlen(msg) + 1, 0, (struct sockaddr *)&addr, sizeof(addr)) == -1)
		die("sendto");
	n = recvfrom(fd, buf, sizeof(buf) - 1, 0, NULL, NULL);
	if (n == -1)
		die("recvfrom");
	buf[n] = '\0';
	printf("%zd bytes: %s\n", n, buf);
	close(fd);
}

int main(int argc, char *argv[])
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 4 && argc <= 5 && strcmp(argv[1], "server") == 0)
		server(atoi(argv[2]), atoi(argv[3]),
		       argc > 4 ? argv[4] : "hello from the C server");
	else if (argc >= 5 && argc <= 6 && strcmp(argv[1], "client") == 0)
		client(argv[2], atoi(argv[3]), argv[4], argc > 5 ? atoi(argv[5]) : 5);
	else
		usage(argv[0]);
	return 0;
}
