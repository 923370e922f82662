/* mq_peer.c - send to or receive from a POSIX message queue.
 *
 * Both modes open /NAME with O_CREAT (mode 0600, MAXMSG messages of at most
 * MSGSIZE bytes: defaults 10 and 256; ignored when the queue exists).
 * send: mq_send MESSAGE with its terminating NUL at PRIORITY.
 * recv: mq_receive COUNT messages, printing "priority<TAB>text" for each.
 *
 * usage: mq_peer send /NAME MESSAGE PRIORITY [MAXMSG MSGSIZE]
 *        mq_peer recv /NAME COUNT [MAXMSG MSGSIZE]
 */
#include <fcntl.h>
#include <mqueue.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void usage(const char *prog)
{
	fprintf(stderr, "usage: %s send /NAME MESSAGE PRIORITY [MAXMSG MSGSIZE]\n"
			"       %s recv /NAME COUNT [MAXMSG MSGSIZE]\n", prog, prog);
	exit(1);
}

static mqd_t open_queue(const char *name, int flags, int argc, char *argv[], int first)
{
	struct mq_attr attr;
	mqd_t mqd;

	memset(&attr, 0, sizeof(attr));
	attr.mq_maxmsg = argc > first ? atol(argv[first]) : 10;
	attr.mq_msgsize = argc > first + 1 ? atol(argv[first + 1]) : 256;
	mqd = mq_open(name, flags | O_CREAT, 0600, &attr);
	if (mqd == (mqd_t)-1)
		die("mq_open");
	return mqd;
}

int main(int argc, char *argv[])
{
	struct mq_attr attr;
	unsigned int prio;
	char *buf;
	ssize_t n;
	mqd_t mqd;
	int i, count;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if ((argc == 5 || argc == 7) && strcmp(argv[1], "send") == 0) {
		mqd = open_queue(argv[2], O_WRONLY, argc, argv, 5);
		if (mq_send(mqd, argv[3], strlen(argv[3]) + 1, atoi(argv[4])) == -1)
			die("mq_send");
	} else if ((argc == 4 || argc == 6) && strcmp(argv[1], "recv") == 0) {
		mqd = open_queue(argv[2], O_RDONLY, argc, argv, 4);
		if (mq_getattr(mqd, &attr) == -1)
			die("mq_getattr");
		buf = malloc(attr.mq_msgsize);
		if (buf == NULL)
			die("malloc");
		count = atoi(argv[3]);
		for (i = 0; i < count; i++) {
			n = mq_receive(mqd, buf, attr.mq_msgsize, &prio);
			if (n == -1)
				die("mq_receive");
			printf("%u\t%.*s\n", prio, (int)n, buf);
		}
		free(buf);
	} else {
		usage(argv[0]);
	}
	if (mq_close(mqd) == -1)
		die("mq_close");
	return 0;
}
