#include <stdio.h>

int main(int argc, char **argv) {
    printf("hello, %s: built and run inside a voidbox microVM\n", argc > 1 ? argv[1] : "world");
    return 0;
}
