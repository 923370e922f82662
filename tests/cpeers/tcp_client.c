/* tcp_client.c - a classic TCP client.
 *
 * Connects to HOST PORT, sends GREETING with its terminating NUL, reads the
 * reply until the server closes the connection and prints it (up to its
 * first NUL) with the number of bytes received.
 *
 * usage: tcp_client HOST PORT [GREETING]
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
	struct sockaddr_in addr;
	char buf[BUF_SIZE];
	const char *greeting;
	size_t total = 0;
	ssize_t n;
	int fd;

	if (argc < 3 || argc > 4) {
		fprintf(stderr, "usage: %s HOST PORT [GREETING]\n", argv[0]);
		exit(1);
	}
	greeting = argc > 3 ? argv[3] : "hello from the C client";
	setvbuf(stdout, NULL, _IOLBF, 0);

	memset(&addr, 0, sizeof(addr));
	addr.sin_family = AF_INET;
	addr.sin_port = htons(atoi(argv[2]));
	if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
		fprintf(stderr, "bad IPv4 address: %s\n", argv[1]);
		exit(1);
	}

	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd == -1)
		die("socket");
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == -1)
		die("connect");
	if (write(fd, greeting, strlen(greeting) + 1) == -1)
		die("write");

	while (total < sizeof(buf) - 1) {
		n = read(fd, buf + total, sizeof(buf) - 1 - total);
		if (n == -1)
			die("read");
		if (n == 0)
			break;
		total += n;
	}
	buf[total] = '\0';
	printf("%zu bytes: %s\n", total, buf);
	close(fd);
	return 0;
}
