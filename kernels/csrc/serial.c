/* Raw termios serial port with poll()-based, CLOCK_MONOTONIC-deadline I/O. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "feetech.h"

int64_t fe_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static speed_t standard_speed(int baud) {
    switch (baud) {
    case 9600: return B9600;
    case 19200: return B19200;
    case 38400: return B38400;
    case 57600: return B57600;
    case 115200: return B115200;
    case 230400: return B230400;
    case 460800: return B460800;
    case 500000: return B500000;
    case 576000: return B576000;
    case 921600: return B921600;
    case 1000000: return B1000000;
    default: return 0;
    }
}

int fe_serial_open(const char *path, int baud, char *err, size_t err_size) {
    int fd = open(path, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        snprintf(err, err_size, "cannot open %s: %s", path, strerror(e));
        return -e;
    }
    struct termios tio;
    if (tcgetattr(fd, &tio) != 0) {
        int e = errno;
        snprintf(err, err_size, "%s is not a serial port (tcgetattr: %s)", path, strerror(e));
        close(fd);
        return -e;
    }
    cfmakeraw(&tio);
    tio.c_cflag |= CLOCAL | CREAD;
    tio.c_cflag &= ~(CSTOPB | PARENB | CRTSCTS);
    tio.c_iflag &= ~(tcflag_t)(IXON | IXOFF | IXANY);
    tio.c_cc[VMIN] = 0;
    tio.c_cc[VTIME] = 0;
    speed_t speed = standard_speed(baud);
    if (speed) {
        cfsetispeed(&tio, speed);
        cfsetospeed(&tio, speed);
    }
    if (tcsetattr(fd, TCSANOW, &tio) != 0) {
        int e = errno;
        snprintf(err, err_size, "cannot configure %s: %s", path, strerror(e));
        close(fd);
        return -e;
    }
    if (!speed) {
        int rc = fe_serial_set_custom_baud(fd, baud);
        if (rc != 0) {
            snprintf(err, err_size, "cannot set %d baud on %s: %s", baud, path, strerror(-rc));
            close(fd);
            return rc;
        }
    }
    fe_serial_flush_input(fd);
    return fd;
}

void fe_serial_close(int fd) {
    if (fd >= 0) close(fd);
}

int fe_serial_flush_input(int fd) {
    uint8_t scratch[512];
    tcflush(fd, TCIFLUSH);
    /* tcflush misses bytes still in the USB/pty layer between the driver and the line discipline. */
    for (;;) {
        ssize_t n = read(fd, scratch, sizeof scratch);
        if (n > 0) continue;
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno != EAGAIN) return -errno;
        return 0;
    }
}

static int poll_until(int fd, short events, int64_t deadline_ns) {
    for (;;) {
        int64_t left = deadline_ns - fe_now_ns();
        if (left <= 0) return 0;
        struct pollfd pfd = {.fd = fd, .events = events};
        struct timespec ts = {.tv_sec = left / 1000000000LL, .tv_nsec = left % 1000000000LL};
        int rc = ppoll(&pfd, 1, &ts, NULL);
        if (rc < 0 && errno == EINTR) continue;
        if (rc < 0) return -errno;
        if (rc == 0) continue; /* re-check the deadline: ppoll may round */
        if (pfd.revents & (events | POLLHUP | POLLERR)) return 1;
    }
}

int fe_serial_write_all(int fd, const uint8_t *buf, size_t n, int64_t deadline_ns) {
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, buf + done, n - done);
        if (w > 0) {
            done += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno != EAGAIN) return -errno;
        int rc = poll_until(fd, POLLOUT, deadline_ns);
        if (rc == 0) return -ETIMEDOUT;
        if (rc < 0) return rc;
    }
    return 0;
}

ssize_t fe_serial_read_until(int fd, uint8_t *buf, size_t cap, int64_t deadline_ns) {
    for (;;) {
        ssize_t n = read(fd, buf, cap);
        if (n > 0) return n;
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno != EAGAIN) return -errno;
        int rc = poll_until(fd, POLLIN, deadline_ns);
        if (rc <= 0) return rc;
        if (rc == 1) {
            /* POLLHUP with nothing to read: the peer is gone; read() reports EIO on a pty. */
            n = read(fd, buf, cap);
            if (n > 0) return n;
            if (n < 0 && errno != EAGAIN && errno != EINTR) return -errno;
            if (n == 0) {
                /* VMIN=0 read of nothing after POLLIN: hang-up. Avoid spinning until the deadline. */
                struct pollfd pfd = {.fd = fd, .events = POLLIN};
                if (poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLHUP)) return -EIO;
            }
        }
    }
}
