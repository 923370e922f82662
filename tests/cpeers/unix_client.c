/* unix_client.c - a classic AF_UNIX stream client.
 *
 * Connects to the socket file PATH, sends GREETING with its terminating NUL,
 * reads the reply until the server closes the connection and prints it (up
 * to its first NUL) with the number of bytes received.
 *
 * usage: unix_client PATH [GREETING]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define BUF_SIZE 4096

static void die(const char *what)
{
	perror(what);
	exit(1);
}

int main(int argc, char *argv[])
{
	struct sockaddr_un addr;
	char buf[BUF_SIZE];
	const char *greeting;
	size_t total = 0;
	ssize_t n;
	int fd;

	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: %s PATH [GREETING]\n", argv[0]);
		exit(1);
	}
	greeting = argc > 2 ? argv[2] : "hello from the C client";
	setvbuf(stdout, NULL, _IOLBF, 0);

	memset(&addr, 0, sizeof(addr));
	addr.sun_family = AF_UNIX;
	if (strlen(argv[1]) >= sizeof(addr.sun_path)) {
		fprintf(stderr, "socket path too long: %s\n", argv[1]);
		exit(1);
	}
	strcpy(addr.sun_path, argv[1]);

	fd = socket(AF_UNIX, SOCK_STREAM, 0);
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
