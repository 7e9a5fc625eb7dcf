/* Non-standard baud rates through termios2/BOTHER. Kept apart because <asm/termbits.h>
 * and glibc's <termios.h> define conflicting structs. */
#include <asm/termbits.h>
#include <errno.h>
#include <sys/ioctl.h>

#include "feetech.h"

int fe_serial_set_custom_baud(int fd, int baud) {
    struct termios2 tio;
    if (ioctl(fd, TCGETS2, &tio) != 0) return -errno;
    tio.c_cflag &= ~(tcflag_t)CBAUD;
    tio.c_cflag |= BOTHER;
    tio.c_ispeed = (speed_t)baud;
    tio.c_ospeed = (speed_t)baud;
    if (ioctl(fd, TCSETS2, &tio) != 0) return -errno;
    return 0;
}
